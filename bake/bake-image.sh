#!/bin/bash
# Bake spotguard's rendered user-data into an image, so instances start with the agent
# installed; first boot then re-runs the per-instance steps (swap sized for that instance's
# RAM, config, enable) quickly, because `cloud-init clean` leaves the image "never booted".
#
# Usage: bake-image.sh --here USER_DATA       on a running builder (e.g. a Packer shell
#                                             provisioner on an EC2 instance), as root
#        bake-image.sh --rootfs DIR USER_DATA  into a Debian root filesystem folder (chroot)
#
# USER_DATA is the rendered cloud-config (Terraform's templatefile() or cloud-init/render.py).
# It runs the user-data's own modules with cloud-init itself: write_files, and runcmd (which
# stages the commands, run right after). In a chroot the swap step defers to
# first boot (its block offsets would not survive copying the tree into a disk) and systemd
# only enables the unit; spotguard_source must then name a path inside DIR (a wheel
# directory: the chroot has no network set up). On a builder the swap file stays: an image
# snapshot keeps its blocks.
set -euo pipefail

usage() {
    sed -n '6,7s/^# \{0,1\}//p' "$0" >&2
    exit 2
}
say() { echo "bake-image: $*" >&2; }

(($# == 2 || $# == 3)) || usage
mode=$1
case $mode in
--here) (($# == 2)) || usage; root=/; user_data=$2 ;;
--rootfs) (($# == 3)) || usage; root=$2; user_data=$3 ;;
*) usage ;;
esac
[[ -f $user_data ]] || { say "no such user-data file: $user_data"; exit 2; }
head -n 1 "$user_data" | grep -qx '#cloud-config' || { say "$user_data is not a #cloud-config"; exit 2; }
[[ -x $root/usr/bin/cloud-init ]] || { say "cloud-init is not installed in $root"; exit 1; }

# The image is not an instance of any cloud yet: the None datasource, and no network waits.
work=$root/var/tmp/spotguard-bake
rm -rf "$work"
mkdir -p "$work"
cp "$user_data" "$work/user-data.yaml"
printf 'datasource_list: [None]\n' >"$work/datasource.cfg"

# `single` runs one module without making the instance current, so scripts_user would not
# find what runcmd staged: the staged script is run here. A chroot cannot start units, so what
# counts is the outcome: spotguard installed and its config valid, the unit enabled.
stages=$(
    cat <<'EOF'
set -eu
cd /var/tmp/spotguard-bake
for module in write_files runcmd; do
    echo "bake-image: cloud-init single --name $module" >&2
    cloud-init --file datasource.cfg --file user-data.yaml single --name "$module" --frequency always
done
script=$(ls -t /var/lib/cloud/instances/*/scripts/runcmd | head -n 1)
echo "bake-image: running $script" >&2
sh "$script" || echo "bake-image: some step failed (a chroot cannot start units); checking" >&2
/usr/local/bin/spotguard --config /etc/spotguard/config.toml config show >/dev/null
systemctl is-enabled spotguard.service
cloud-init clean --logs --machine-id
EOF
)

if [[ $mode == --here ]]; then
    if cloud-init status 2>/dev/null | grep -q 'status: running'; then
        say "waiting for the boot's own cloud-init run to finish"
        cloud-init status --wait >/dev/null || true
    fi
    sh -c "$stages"
else
    # A private mount namespace: the bind mounts vanish with it, even if a stage fails.
    unshare --mount --propagation private sh -c '
        root=$1 stages=$2
        for fs in proc sys dev; do mount --rbind "/$fs" "$root/$fs"; done
        chroot "$root" env SPOTGUARD_DEFER_SWAP=1 SYSTEMD_OFFLINE=1 sh -c "$stages"
    ' bake "$root" "$stages"
fi
rm -rf "$work"
installed=$(find "$root/opt/spotguard/lib" -maxdepth 3 -name 'spotguard-*.dist-info' -printf '%f\n' 2>/dev/null)
[[ -n $installed ]] || { say "spotguard is not in $root/opt/spotguard after the bake"; exit 1; }
say "baked ${installed%.dist-info} into $root"
