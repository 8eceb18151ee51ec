#!/usr/bin/env bash
# Host tools for the guest testbed (testbed/, `make smoke`): QEMU, the image builder's tools.
# Idempotent: installs only what is missing, so a second run costs one dpkg query.
set -euo pipefail
packages=(qemu-system-x86 qemu-utils debootstrap e2fsprogs genisoimage)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi
