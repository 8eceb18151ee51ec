#!/usr/bin/env bash
# Checks of the Terraform module, all offline: fmt, init + validate, `terraform test` (mocked
# AWS provider), apply -> check_fleet.py -> destroy of examples/test-fleet against a moto
# server on 127.0.0.1, and checkov. One PASS/FAIL/SKIP line per check; exit 1 on any FAIL.
#
#   bash .ci/terraform.sh
#
# Needs: terraform on PATH; the hashicorp/aws provider under TF_PLUGIN_DIR (default
# /opt/tf-plugins; without it only fmt and checkov run); the project venv (VENV, default
# .venv) with moto[server] and boto3; python3 with venv + pip access to PyPI for checkov,
# which goes into its own venv (CHECKOV_VENV, default .venv-checkov) on first use.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
plugin_dir=${TF_PLUGIN_DIR:-/opt/tf-plugins}
venv=${VENV:-$repo/.venv}
checkov_venv=${CHECKOV_VENV:-$repo/.venv-checkov}
fleet_size=2
work=$(mktemp -d)
moto_pid=
failures=0

# Terraform runs on a copy, so no .terraform, lock file or state ever lands in the tree (and a
# real fleet's state next to the example is never touched).
# The module renders ../cloud-init/user-data.yaml, so that comes along.
sources=(terraform)
[[ -d $repo/cloud-init ]] && sources+=(cloud-init)
tar -C "$repo" --exclude=.terraform --exclude=.terraform.lock.hcl --exclude='*.tfstate*' \
    -cf - "${sources[@]}" | tar -C "$work" -xf -
module=$work/terraform
example=$module/examples/test-fleet

# Nothing may reach AWS or a metadata service: fake credentials, no shared config, no
# instance metadata, no Terraform update check.
unset AWS_PROFILE AWS_SESSION_TOKEN AWS_ENDPOINT_URL
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0 TF_CLI_CONFIG_FILE=$work/terraformrc
: >"$TF_CLI_CONFIG_FILE"

finish() {
    if [[ -n $moto_pid ]]; then
        kill "$moto_pid" 2>/dev/null
        wait "$moto_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap finish EXIT

# check NAME COMMAND...: run it, log to $work, print PASS or FAIL with the log's tail.
check() {
    local name=$1 log started=$SECONDS
    shift
    log=$work/$(tr -c 'a-z0-9\n' '-' <<<"$name").log
    if "$@" >"$log" 2>&1; then
        echo "PASS $name ($((SECONDS - started))s)"
        return 0
    fi
    echo "FAIL $name ($((SECONDS - started))s)"
    tail -n 40 "$log" | sed 's/^/    /'
    failures=$((failures + 1))
    return 1
}

tf() { terraform -chdir="$1" "${@:2}" -no-color; }

tf_init() { tf "$1" init -backend=false -plugin-dir="$plugin_dir" -input=false; }

init_validate() { tf_init "$1" && tf "$1" validate; }

start_moto() {
    local port
    port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
    moto_pid=$!
    moto_url=http://127.0.0.1:$port
    "$venv/bin/python" - "$moto_url" <<'EOF'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("moto did not come up on " + sys.argv[1])
EOF
}

# Every request the provider logged went to the moto server.
only_local_requests() {
    local strays
    grep -q "http\.url=$moto_url/" "$@" || { echo "no requests logged in $*"; return 1; }
    strays=$(grep -ho 'http\.url=[^ ]*' "$@" | grep -v "^http\.url=$moto_url/" | sort -u)
    [[ -z $strays ]] || { echo "requests that left 127.0.0.1: $strays"; return 1; }
}

# fleet apply|destroy: against moto, with the provider's requests logged.
fleet() {
    TF_LOG=DEBUG TF_LOG_PATH=$work/$1-debug.log tf "$example" "$1" -auto-approve \
        -var "endpoint=$moto_url" -var "instance_count=$fleet_size" \
        -var "spotguard_lock=spotguard==0.1.0 --hash=sha256:$(printf '%064d' 0)"
}

check_fleet() {
    tf "$example" output -json >"$work/outputs.json" &&
        "$venv/bin/python" "$example/check_fleet.py" "$work/outputs.json" \
            --count "$fleet_size" --endpoint-url "$moto_url"
}

install_checkov() {
    [[ -x $checkov_venv/bin/checkov ]] && return 0
    python3 -m venv "$checkov_venv" && "$checkov_venv/bin/pip" install -q 'checkov>=3.2,<4'
}

run_checkov() {
    "$checkov_venv/bin/checkov" --config-file "$repo/terraform/.checkov.yaml" -d "$repo/terraform"
}

check "terraform fmt -check -recursive terraform/" terraform fmt -check -recursive -diff "$repo/terraform"

if [[ ! -d $plugin_dir/registry.terraform.io/hashicorp/aws ]]; then
    echo "SKIP terraform validate, test, apply: no hashicorp/aws provider in $plugin_dir"
else
    check "terraform init + validate (module)" init_validate "$module" &&
        check "terraform test (mock_provider aws)" tf "$module" test
    if check "terraform init + validate (examples/test-fleet)" init_validate "$example" &&
        check "moto server on 127.0.0.1" start_moto &&
        check "terraform apply examples/test-fleet against moto ($fleet_size instances)" fleet apply; then
        check "boto3 check_fleet.py: instances, launch template, drill template, rules, roles" check_fleet
        check "terraform destroy examples/test-fleet" fleet destroy
        check "provider requests went only to 127.0.0.1" \
            only_local_requests "$work"/apply-debug.log "$work"/destroy-debug.log
    fi
fi

check "checkov installed in ${checkov_venv#"$repo"/}" install_checkov &&
    check "checkov -d terraform/ --framework terraform (skips: terraform/.checkov.yaml)" run_checkov

if ((failures)); then
    echo "terraform checks: $failures failed"
    exit 1
fi
echo "terraform checks: all passed"
