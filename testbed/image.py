"""Build the Debian guest disk, cached in two layers so a code change costs seconds, not minutes.

Layer 1, the OS: ``debootstrap`` into a folder, keyed by suite, mirror, package list and
BUILDER_VERSION. Layer 2, thin: the guest's configuration, spotguard's wheelhouse
(``/opt/wheels``), a venv with spotguard installed (``/opt/spotguard``,
``/usr/local/bin/spotguard``) and the in-guest testbed programs (``/opt/testbed``), keyed by
the hashes of their sources and of this builder. ``mkfs.ext4 -d`` turns the result into a raw
disk without loop devices or mounts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger()

BUILDER_VERSION = 3
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "initramfs-tools",
    "python3",
    "python3-venv",
    "python3-cffi-backend",
    "cloud-init",
    "e2fsprogs",
    "util-linux",
    "procps",
    "iproute2",
    "isc-dhcp-client",
)
ROOT_SIZE = "6G"  # sparse; leaves room for the workload's page-cache file at 8 GB
REPO = Path(__file__).resolve().parents[1]
INGUEST = Path(__file__).resolve().parent / "inguest"
# Installed as the user-data installs them: the sleep hook (hibernate_now runs it after resume)
# and the readahead unit it starts. The agent's own unit is not: testbed-agent runs it.
SLEEP_PATH = {
    "systemd/spotguard-sleep": "usr/lib/systemd/system-sleep/spotguard",
    "systemd/spotguard-readahead.service": "etc/systemd/system/spotguard-readahead.service",
}
CACHE_DIR = Path(__file__).resolve().parent / ".cache"  # git-ignored
# Units that only slow a TCG boot down or talk to the console we read.
MASKED_UNITS = (
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "systemd-timesyncd.service",
    "getty-static.service",
)
FSTAB = """\
/dev/vda / ext4 rw,relatime,errors=remount-ro 0 1
/dev/vdb none swap sw,nofail,x-systemd.device-timeout=90s 0 0
"""
# Only for testbed runs (the cloud-init test leaves networking to cloud-init): the address
# the simulator is reached at, 169.254.169.254, is on-link in QEMU's 169.254.0.0/16 net.
NETWORK = """\
[Match]
Name=en* eth*
KernelCommandLine=testbed.arm

[Network]
Address=169.254.0.15/16
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


class BuildError(RuntimeError):
    """The guest image could not be built (a tool failed or the mirror was unreachable)."""


@dataclass(frozen=True, slots=True)
class BaseImage:
    """A bootable guest: raw ext4 root plus the kernel and initrd for direct kernel boot."""

    root: Path
    kernel: Path
    initrd: Path
    key: str


def build_base(
    cache_dir: Path,
    *,
    source: Path = REPO,
    mirror: str = MIRROR,
    packages: Iterable[str] = PACKAGES,
) -> BaseImage:
    """The guest image for the current spotguard checkout `source`, built only when stale.

    Safe to call from several processes at once: they take turns on a lock in `cache_dir`.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(cache_dir, source, mirror, tuple(packages))


def _build(cache_dir: Path, source: Path, mirror: str, packages: tuple[str, ...]) -> BaseImage:
    os_key = _digest(json.dumps([BUILDER_VERSION, SUITE, mirror, sorted(packages)]).encode())
    rootfs = _os_layer(cache_dir, os_key, mirror, packages)
    spotguard_key = _tree_digest(source, ["pyproject.toml", "spotguard/**/*.py"])
    layer_key = _tree_digest(INGUEST.parent, ["image.py", "inguest/**/*"])
    sleep_key = _tree_digest(source, list(SLEEP_PATH))
    key = _digest(f"{os_key}:{spotguard_key}:{layer_key}:{sleep_key}".encode())
    image = BaseImage(
        root=cache_dir / f"root-{key}.raw",
        kernel=cache_dir / f"vmlinuz-{key}",
        initrd=cache_dir / f"initrd-{key}",
        key=key,
    )
    if image.root.exists():
        return image
    wheels = _wheelhouse(cache_dir, spotguard_key, source)
    # The previous image stays: a run in progress boots it again to resume.
    _prune(cache_dir, "root-*.raw", "vmlinuz-*", "initrd-*", keep=1)
    work = cache_dir / "layer.tmp"
    shutil.rmtree(work, ignore_errors=True)
    log.info("image.layer", key=key)
    try:
        _run(["cp", "-a", "--reflink=auto", str(rootfs), str(work)])
        _thin_layer(work, wheels, source)
        shutil.copyfile(_only(work / "boot", "vmlinuz-*"), image.kernel)
        shutil.copyfile(_only(work / "boot", "initrd.img-*"), image.initrd)
        partial = image.root.with_suffix(".tmp")
        partial.unlink(missing_ok=True)
        _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(work), str(partial), ROOT_SIZE])
        partial.rename(image.root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("image.ready", root=str(image.root))
    return image


def _os_layer(cache_dir: Path, key: str, mirror: str, packages: tuple[str, ...]) -> Path:
    rootfs = cache_dir / f"rootfs-{key}"
    if rootfs.exists():
        return rootfs
    _prune(cache_dir, "rootfs-*")
    partial = cache_dir / "rootfs.tmp"
    shutil.rmtree(partial, ignore_errors=True)
    log.info("image.debootstrap", suite=SUITE, mirror=mirror, packages=len(packages))
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            SUITE,
            str(partial),
            mirror,
        ]
    )
    partial.rename(rootfs)
    return rootfs


def _configure_os(rootfs: Path) -> None:
    (rootfs / "etc/hostname").write_text("testbed\n")
    (rootfs / "etc/hosts").write_text("127.0.0.1 localhost testbed\n")
    (rootfs / "etc/fstab").write_text(FSTAB)
    (rootfs / "etc/systemd/network/10-testbed.network").write_text(NETWORK)
    for unit in MASKED_UNITS:
        link = rootfs / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    _run(["chroot", str(rootfs), "systemctl", "enable", "systemd-networkd.service"])
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / cache).glob("*"):
            if item.is_file():
                item.unlink()


def _wheelhouse(cache_dir: Path, key: str, source: Path) -> Path:
    """spotguard's wheel and its dependencies' (host python is 3.11 like bookworm's)."""
    wheels = cache_dir / f"wheels-{key}"
    if wheels.exists():
        return wheels
    _prune(cache_dir, "wheels-*")
    partial = cache_dir / "wheels.tmp"
    shutil.rmtree(partial, ignore_errors=True)
    log.info("image.wheelhouse", source=str(source))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(partial), str(source)])
    partial.rename(wheels)
    return wheels


def _thin_layer(rootfs: Path, wheels: Path, source: Path) -> None:
    _configure_os(rootfs)
    shutil.copytree(wheels, rootfs / "opt/wheels")
    _run(["chroot", str(rootfs), "python3", "-m", "venv", "/opt/spotguard"])
    pip = ["/opt/spotguard/bin/pip", "install", "-q", "--no-index", "--find-links", "/opt/wheels"]
    _run(["chroot", str(rootfs), *pip, "spotguard"])
    (rootfs / "usr/local/bin/spotguard").symlink_to("/opt/spotguard/bin/spotguard")
    package = rootfs / "opt/testbed/testbed"
    shutil.copytree(INGUEST, package / "inguest", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(INGUEST.parent / "__init__.py", package / "__init__.py")
    (rootfs / "etc/spotguard").mkdir(exist_ok=True)
    shutil.copyfile(INGUEST / "spotguard.toml", rootfs / "etc/spotguard/config.toml")
    shutil.copy2(INGUEST / "bin/hibernate-now", rootfs / "usr/local/sbin/hibernate-now")
    for name, target in SLEEP_PATH.items():
        (rootfs / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, rootfs / target)
    wants = rootfs / "etc/systemd/system/multi-user.target.wants"
    for unit in sorted((INGUEST / "units").glob("*")):
        shutil.copyfile(unit, rootfs / "etc/systemd/system" / unit.name)
        if "WantedBy=multi-user.target" in unit.read_text():
            (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")


def _tree_digest(top: Path, patterns: list[str]) -> str:
    files = sorted({p for pattern in patterns for p in top.glob(pattern) if p.is_file()})
    files = [p for p in files if "__pycache__" not in p.parts]
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(top)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise BuildError(f"expected one {pattern} in {folder}, found {[p.name for p in found]}")
    return found[0]


def _prune(cache_dir: Path, *patterns: str, keep: int = 0) -> None:
    """Old layers go, all but the newest `keep`: the cache must stay well under the 10 GB
    scratch budget."""
    for pattern in patterns:
        found = sorted(cache_dir.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in found[keep:]:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise BuildError(f"{argv[0]} failed ({done.returncode}): " + "\n".join(tail))
