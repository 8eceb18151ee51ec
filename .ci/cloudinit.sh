#!/usr/bin/env bash
# Checks for cloud-init/ and systemd/: the user-data is current and valid for cloud-init's own
# schema (raw template and rendered), the unit passes systemd-analyze verify, the scripts parse.
# cloud-init is not on PyPI: Debian's package is downloaded and unpacked under .cache/cloud-init
# and run from a venv holding only its Python dependencies; nothing is installed system-wide.
set -uo pipefail
cd "$(dirname "$0")/.."
cache=.cache/cloud-init
site=$cache/root/usr/lib/python3/dist-packages
failed=0

pass() { echo "PASS $1"; }
fail() {
    echo "FAIL $1"
    [[ -z ${2:-} ]] || sed 's/^/    /' <<<"$2"
    failed=1
}
check() { # check NAME COMMAND...: PASS when the command exits 0, else FAIL with its output
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}

fetch_cloud_init() {
    [[ -d $site/cloudinit ]] && return 0
    mkdir -p "$cache"
    (cd "$cache" && { apt-get download -q cloud-init || { apt-get update -qq && apt-get download -q cloud-init; }; }) &&
        dpkg-deb -x "$(ls "$cache"/cloud-init_*.deb | tail -n 1)" "$cache/root"
}
cloud_init_venv() {
    [[ -f $cache/venv/.installed ]] && return 0
    python3 -m venv "$cache/venv" &&
        "$cache/venv/bin/pip" install -q pyyaml jsonschema requests configobj jsonpatch &&
        touch "$cache/venv/.installed"
}
schema() { PYTHONPATH=$site "$cache/venv/bin/python" -m cloudinit.cmd.main schema --config-file "$1"; }
unit_copy() { # unit $2 with ExecStart (which must exist for systemd-analyze) at a placeholder in $1
    printf '#!/bin/sh\n' >"$1/spotguard" && chmod +x "$1/spotguard"
    sed "s|^ExecStart=/usr/local/bin/spotguard|ExecStart=$1/spotguard|" "systemd/$2" >"$1/$2"
}
verify_unit() { # any complaint about unit $1 fails
    local dir out
    dir=$(mktemp -d)
    unit_copy "$dir" "$1"
    out=$(systemd-analyze verify "$dir/$1" 2>&1)
    local rc=$?
    rm -rf "$dir"
    echo "$out"
    ((rc == 0)) && [[ -z $out ]]
}
unit_security() { # unit $1's exposure score, 3.0 ("OK") at most; the figure goes to the log
    local dir out
    dir=$(mktemp -d)
    unit_copy "$dir" "$1"
    out=$(systemd-analyze security --offline=true --threshold=30 "$dir/$1" 2>&1)
    local rc=$?
    rm -rf "$dir"
    grep -v '✓' <<<"$out"
    ((rc == 0))
}

check "user-data.yaml is built from its parts (render.py build --check)" \
    python3 cloud-init/render.py build --check

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '[reclaim]\nbackground = ["system.slice"]\n' >"$tmp/extra.toml"
printf 'spotguard==0.1.0 --hash=sha256:%064d\n' 0 >"$tmp/spotguard.lock"
check "user-data renders with sample values" bash -c "python3 cloud-init/render.py render \
    --var spotguard_source=/opt/wheels --var-file spotguard_lock=$tmp/spotguard.lock \
    --var hibernate_mode=local --var imds_url=http://169.254.169.254 --var swap_mb=0 \
    --var-file config_toml=$tmp/extra.toml >$tmp/rendered.yaml"

if out=$(fetch_cloud_init 2>&1 && cloud_init_venv 2>&1); then
    check "cloud-init schema: rendered user-data" schema "$tmp/rendered.yaml"
    check "cloud-init schema: raw template" schema cloud-init/user-data.yaml
else
    fail "cloud-init (Debian package) could not be fetched for the schema check" "$out"
fi

if command -v systemd-analyze >/dev/null; then
    for unit in spotguard.service spotguard-readahead.service; do
        check "systemd-analyze verify systemd/$unit" verify_unit "$unit"
        if out=$(unit_security "$unit"); then
            pass "systemd-analyze security systemd/$unit: $(sed -n 's/.*Overall exposure level[^:]*: \([0-9.]* [A-Z]*\).*/\1/p' <<<"$out")"
        else
            fail "systemd-analyze security systemd/$unit (above 3.0)" "$out"
        fi
    done
else
    fail "systemd-analyze is not installed"
fi
for script in cloud-init/spotguard-setup-swap cloud-init/spotguard-install bake/bake-image.sh; do
    check "bash -n $script" bash -n "$script"
done
check "sh -n systemd/spotguard-sleep" sh -n systemd/spotguard-sleep

if ((failed)); then
    echo "cloud-init checks: FAILED"
    exit 1
fi
echo "cloud-init checks: all passed"
