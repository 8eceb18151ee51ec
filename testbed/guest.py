"""Boot the testbed guest under QEMU and watch its serial console.

Per run: a qcow2 overlay over the cached base image and a fresh swap disk (`Disks`), so runs
never touch the base and are deleted afterwards. Per boot (`Guest.boot`): direct kernel boot,
virtio disks throttled together as one 100 MB/s disk, the serial console read as lines stamped
with the host's monotonic clock on arrival (`Console`), a QMP socket to stop QEMU, and no
network unless asked: the only network offered is `ImdsNetwork`, QEMU's isolated user net
whose one reachable address, 169.254.169.254:80, is relayed to a simulator on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from testbed.image import BaseImage, BuildError, build_base

__all__ = [
    "BaseImage",
    "BuildError",
    "Console",
    "Disks",
    "Ec2Identity",
    "Guest",
    "GuestError",
    "ImdsNetwork",
    "Line",
    "Machine",
    "build_base",
    "nocloud_seed",
]

DISK_BPS = 100 << 20
RELAY = Path(__file__).resolve().parent / "relay.py"
BASE_CMDLINE = (
    "root=/dev/vda",
    "rw",
    "console=ttyS0,115200",
    "systemd.unified_cgroup_hierarchy=1",
    "zswap.enabled=0",
    "panic=-1",
)


class GuestError(RuntimeError):
    """The guest did not do what was waited for (timeout, early exit, QEMU failure)."""


@dataclass(frozen=True, slots=True)
class Machine:
    """What QEMU emulates. Under TCG the CPU is a co-bottleneck: compare arms, not seconds."""

    memory_mib: int = 2048
    cpus: int = 2
    accel: str = "tcg"  # tcg | kvm
    disk_bps: int = DISK_BPS

    def qemu_args(self) -> list[str]:
        accel = ["-accel", "tcg,thread=multi"] if self.accel == "tcg" else ["-accel", "kvm"]
        return [*accel, "-cpu", "max", "-m", str(self.memory_mib), "-smp", str(self.cpus)]


@dataclass(frozen=True, slots=True)
class ImdsNetwork:
    """The safe network: QEMU's restricted user net, where 169.254.169.254:80 is relayed to
    ``127.0.0.1:port`` on the host (a metadata simulator) and nothing else is reachable."""

    port: int

    def qemu_args(self) -> list[str]:
        relay = f"{_plain(sys.executable)} {_plain(str(RELAY))} {self.port}"
        netdev = (
            f"user,id=n0,restrict=on,net=169.254.0.0/16,guestfwd=tcp:169.254.169.254:80-cmd:{relay}"
        )
        return ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0"]


@dataclass(frozen=True, slots=True)
class Ec2Identity:
    """SMBIOS that makes the guest look like EC2, so cloud-init picks its Ec2 datasource:
    serial and uuid equal and starting with ``ec2``."""

    uuid: str = "ec2a1b2c-3d4e-5f60-7182-93a4b5c6d7e8"

    def qemu_args(self) -> list[str]:
        if not self.uuid.lower().startswith("ec2"):
            raise ValueError("an EC2 SMBIOS uuid starts with 'ec2'")
        fields = f"type=1,manufacturer=Amazon EC2,serial={self.uuid},uuid={self.uuid}"
        return ["-smbios", fields]


@dataclass(frozen=True, slots=True)
class Disks:
    """One run's writable disks: ``vda`` an overlay over the base, ``vdb`` swap (optional),
    then any extra read-only disks (a NoCloud seed)."""

    root: Path
    swap: Path | None = None
    extra: tuple[Path, ...] = ()

    @classmethod
    def create(
        cls,
        image: BaseImage,
        folder: Path,
        *,
        swap_bytes: int = 0,
        extra: Sequence[Path] = (),
    ) -> Disks:
        folder.mkdir(parents=True, exist_ok=True)
        root = folder / "root.qcow2"
        _tool(
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(image.root.resolve()),
            str(root),
        )
        swap = None
        if swap_bytes:
            swap = folder / "swap.raw"
            with swap.open("wb") as sparse:
                sparse.truncate(swap_bytes)
            _tool("mkswap", "-q", "-L", "swap", str(swap))
        return cls(root=root, swap=swap, extra=tuple(extra))

    def remove(self) -> None:
        for path in (self.root, self.swap):
            if path is not None:
                path.unlink(missing_ok=True)

    def qemu_args(self, bps: int) -> list[str]:
        throttle = f"throttling.bps-total={bps},throttling.group=g0"
        args = ["-drive", f"file={_plain(str(self.root))},if=virtio,format=qcow2,{throttle}"]
        if self.swap is not None:
            args += ["-drive", f"file={_plain(str(self.swap))},if=virtio,format=raw,{throttle}"]
        for disk in self.extra:
            args += ["-drive", f"file={_plain(str(disk))},if=virtio,format=raw,readonly=on"]
        return args


@dataclass(frozen=True, slots=True)
class Line:
    """One console line and the host's `time.monotonic()` when it arrived."""

    t: float
    text: str
    index: int


@dataclass
class Console:
    """The serial console as timed lines, kept in memory and copied to a log file."""

    log_path: Path
    lines: list[Line] = field(default_factory=list)
    closed: bool = False
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def follow(self, stream: IO[bytes]) -> threading.Thread:
        thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        thread.start()
        return thread

    def _read(self, stream: IO[bytes]) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            for raw in stream:
                now = time.monotonic()
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                log.write(f"{now:.3f} {text}\n")
                with self._changed:
                    self.lines.append(Line(now, text, len(self.lines)))
                    self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def find(self, pattern: str, start: int = 0) -> Line | None:
        regex = re.compile(pattern)
        with self._changed:
            return next((ln for ln in self.lines[start:] if regex.search(ln.text)), None)

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> Line:
        """The first line from index `start` on matching `pattern`; GuestError on timeout
        or when the console closes (QEMU exited) first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line.text):
                        return line
                seen = max(seen, len(self.lines))
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    why = "the console closed" if self.closed else f"{timeout:.0f} s passed"
                    raise GuestError(f"no console line matching {pattern!r}: {why}")
                self._changed.wait(min(left, 1.0))


class Guest:
    """One QEMU process. Use as a context manager: leaving it always stops QEMU."""

    def __init__(self, process: subprocess.Popen[bytes], console: Console, qmp: Path) -> None:
        self.process = process
        self.console = console
        self.qmp = qmp
        self.started = time.monotonic()
        self.exited: float | None = None
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    @classmethod
    def boot(
        cls,
        image: BaseImage,
        disks: Disks,
        folder: Path,
        *,
        machine: Machine = Machine(),
        cmdline: Sequence[str] = (),
        network: ImdsNetwork | None = None,
        identity: Ec2Identity | None = None,
        name: str = "guest",
    ) -> Guest:
        """Start QEMU; console lines go to ``folder/NAME.console``, QEMU's stderr beside it."""
        folder.mkdir(parents=True, exist_ok=True)
        qmp = folder / f"{name}.qmp"
        qmp.unlink(missing_ok=True)
        kernel_args = [*BASE_CMDLINE, *(["resume=/dev/vdb"] if disks.swap else []), *cmdline]
        argv = [
            "qemu-system-x86_64",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            *machine.qemu_args(),
            "-kernel",
            str(image.kernel),
            "-initrd",
            str(image.initrd),
            "-append",
            " ".join(kernel_args),
            *disks.qemu_args(machine.disk_bps),
            "-chardev",
            "stdio,id=con,signal=off",
            "-serial",
            "chardev:con",
            "-qmp",
            f"unix:{_plain(str(qmp))},server=on,wait=off",
            *(network.qemu_args() if network else ["-nic", "none"]),
            *(identity.qemu_args() if identity else []),
        ]
        console = Console(folder / f"{name}.console")
        with (folder / f"{name}.qemu.log").open("ab") as errors:
            process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors
            )
        assert process.stdout is not None
        guest = cls(process, console, qmp)
        console.follow(process.stdout)
        return guest

    def _wait(self) -> None:
        self.process.wait()
        self.exited = time.monotonic()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> Line:
        return self.console.wait_for(pattern, timeout, start)

    def wait_exit(self, timeout: float) -> float:
        """The host time QEMU exited at (the guest powered off); GuestError on timeout."""
        self._waiter.join(timeout)
        if self.exited is None:
            raise GuestError(f"QEMU still running after {timeout:.0f} s")
        return self.exited

    def quit(self, timeout: float = 30.0) -> None:
        """Stop QEMU through QMP (as pulling the plug), killing it if that does not work."""
        if self.exited is None:
            try:
                _qmp(self.qmp, "quit")
            except OSError:
                self.process.kill()
        try:
            self.wait_exit(timeout)
        except GuestError:
            self.process.kill()
            self.wait_exit(timeout)
        if self.process.stdin is not None:
            self.process.stdin.close()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.quit()


def nocloud_seed(folder: Path, user_data: bytes, meta_data: str) -> Path:
    """A NoCloud ``cidata`` ISO for `Disks.create(extra=...)`: the other way, besides
    `Ec2Identity`, to hand cloud-init its data."""
    content = folder / "seed"
    content.mkdir(parents=True, exist_ok=True)
    (content / "user-data").write_bytes(user_data)
    (content / "meta-data").write_text(meta_data)
    seed = folder / "seed.iso"
    _tool(
        "genisoimage",
        "-quiet",
        "-output",
        str(seed),
        "-volid",
        "cidata",
        "-joliet",
        "-rock",
        str(content / "user-data"),
        str(content / "meta-data"),
    )
    return seed


def _qmp(path: Path, command: str) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = sock.makefile("rwb")
        stream.readline()  # greeting
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\n")
            stream.flush()
            stream.readline()


def _plain(text: str) -> str:
    """QEMU option values split on commas and the relay command on spaces: refuse both."""
    if "," in text or " " in text:
        raise ValueError(f"path not usable in a QEMU option (comma or space): {text!r}")
    return text


def _tool(*argv: str) -> None:
    if shutil.which(argv[0]) is None:
        raise GuestError(f"{argv[0]} not found: run .ci/guest-deps.sh")
    subprocess.run(argv, check=True, capture_output=True)
