"""The cloud-init user-data, its scripts and the systemd unit, checked on the host.

The swap script runs for real in a temp dir (its --root), never touching the host's swap or
boot configuration; cloud-init's own schema check needs the Debian package that
`bash .ci/cloudinit.sh` unpacks into .cache/cloud-init.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from spotguard.config import from_mapping

REPO = Path(__file__).resolve().parents[1]
RENDER = REPO / "cloud-init" / "render.py"
TEMPLATE = REPO / "cloud-init" / "user-data.yaml"
SETUP_SWAP = REPO / "cloud-init" / "spotguard-setup-swap"
INSTALL = REPO / "cloud-init" / "spotguard-install"
LOCK = REPO / "cloud-init" / "lock.py"
UNIT = REPO / "systemd" / "spotguard.service"
READAHEAD_UNIT = REPO / "systemd" / "spotguard-readahead.service"
SLEEP_HOOK = REPO / "systemd" / "spotguard-sleep"
CLOUD_INIT = REPO / ".cache" / "cloud-init"
FIBMAP = 1  # ioctl: a file's block -> the filesystem's block
SAMPLE = {
    "spotguard_source": "/opt/wheels",
    "spotguard_lock": "spotguard==0.1.0 --hash=sha256:" + "0" * 64 + "\n",
    "hibernate_mode": "local",
    "imds_url": "http://169.254.169.254",  # rendered into text only: nothing connects to it
    "swap_mb": "0",
    "config_toml": '[reclaim]\nbackground = ["system.slice", "batch.slice"]\n',
}
# Where each file the user-data writes comes from in this repository.
WRITTEN_FROM = {
    "/usr/local/sbin/spotguard-install": INSTALL,
    "/usr/local/sbin/spotguard-setup-swap": SETUP_SWAP,
    "/etc/systemd/system/spotguard.service": UNIT,
    "/etc/systemd/system/spotguard-readahead.service": READAHEAD_UNIT,
    "/usr/lib/systemd/system-sleep/spotguard": SLEEP_HOOK,
}


def render_user_data(values: dict[str, str], template: Path = TEMPLATE) -> str:
    """The user-data as Terraform's templatefile() renders it (cloud-init/render.py)."""
    argv = [sys.executable, str(RENDER), "render", "--template", str(template)]
    argv += [f"--var={name}={value}" for name, value in values.items()]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ValueError(done.stderr.strip())
    return done.stdout


def _parsed(values: dict[str, str] = SAMPLE) -> dict[str, Any]:
    text = render_user_data(values)
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def _files(data: dict[str, Any]) -> list[dict[str, Any]]:
    files = data["write_files"]
    assert isinstance(files, list)
    return files


def _config_text(data: dict[str, Any]) -> str:
    """What /etc/spotguard/config.toml ends up holding: the first entry, then the appends."""
    parts = [f for f in _files(data) if f["path"] == "/etc/spotguard/config.toml"]
    assert [bool(f.get("append")) for f in parts] == [False, True]
    return "".join(str(f["content"]) for f in parts)


# -- the template --------------------------------------------------------------------------
def test_user_data_is_built_from_its_parts() -> None:
    done = subprocess.run(
        [sys.executable, str(RENDER), "build", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_rendered_user_data_writes_the_repository_files_verbatim() -> None:
    written = {f["path"]: f for f in _files(_parsed())}
    for path, source in WRITTEN_FROM.items():
        assert written[path]["content"] == source.read_text(), path
    assert written["/usr/local/sbin/spotguard-setup-swap"]["permissions"] == "0755"
    assert written["/usr/lib/systemd/system-sleep/spotguard"]["permissions"] == "0755"


def test_the_lock_reaches_the_instance_verbatim_in_the_user_data() -> None:
    lock = "".join(f"p{i}==1.{i} --hash=sha256:{i:064x}\n" for i in range(40)) + "# {x}\n"
    written = {f["path"]: f for f in _files(_parsed({**SAMPLE, "spotguard_lock": lock}))}
    assert written["/etc/spotguard/spotguard.lock"]["content"] == lock


def test_config_toml_combines_the_variables_and_the_extra_toml() -> None:
    values = {**SAMPLE, "imds_url": "http://127.0.0.1:8169", "hibernate_mode": "ec2"}
    config = from_mapping(tomllib.loads(_config_text(_parsed(values))), env={})
    assert config.imds.url == "http://127.0.0.1:8169"
    assert config.hibernate.mode == "ec2"
    assert config.reclaim.background == ("system.slice", "batch.slice")


def test_config_toml_may_extend_hibernate_with_dotted_keys() -> None:
    values = {**SAMPLE, "config_toml": "hibernate.swap_margin = 1.5\n"}
    config = from_mapping(tomllib.loads(_config_text(_parsed(values))), env={})
    assert config.hibernate.swap_margin == 1.5
    assert config.hibernate.mode == "local"


def test_runcmd_installs_swaps_checks_and_starts_in_that_order() -> None:
    source = 'https://pypi.example/simple?x="<&>"'
    runcmd = _parsed({**SAMPLE, "spotguard_source": source, "swap_mb": "6000"})["runcmd"]
    assert runcmd == [
        ["/usr/local/sbin/spotguard-install", source, "/etc/spotguard/spotguard.lock"],
        ["/usr/local/sbin/spotguard-setup-swap", "--size-mb", "6000"],
        ["/usr/local/bin/spotguard", "--config", "/etc/spotguard/config.toml", "config", "show"],
        ["systemctl", "enable", "--now", "spotguard.service"],
    ]


@pytest.mark.parametrize("missing", sorted(SAMPLE))
def test_every_template_variable_is_required(missing: str) -> None:
    values = {k: v for k, v in SAMPLE.items() if k != missing}
    with pytest.raises(ValueError, match=f"no value for template variable '{missing}'"):
        render_user_data(values)


@pytest.mark.parametrize(
    ("text", "error"),
    [("x: ${unknown_thing(1)}\n", "unsupported expression"), ("%{ if true }\n", "directives")],
)
def test_renderer_refuses_what_it_does_not_know(tmp_path: Path, text: str, error: str) -> None:
    template = tmp_path / "t.yaml"
    template.write_text(text)
    with pytest.raises(ValueError, match=error):
        render_user_data(SAMPLE, template)


def test_renderer_unescapes_like_terraform(tmp_path: Path) -> None:
    template = tmp_path / "t.yaml"
    template.write_text("a: $${HOME} %%{x} ${swap_mb}\n")
    assert render_user_data(SAMPLE, template) == "a: ${HOME} %{x} 0\n"


def _schema_tool() -> list[str]:
    python = CLOUD_INIT / "venv" / "bin" / "python"
    if not python.exists():
        pytest.skip("cloud-init is not unpacked: `bash .ci/cloudinit.sh` fetches it into .cache")
    return [str(python), "-m", "cloudinit.cmd.main", "schema", "--config-file"]


@pytest.mark.parametrize("rendered", [True, False], ids=["rendered", "raw-template"])
def test_cloud_init_schema_accepts_the_user_data(tmp_path: Path, rendered: bool) -> None:
    tool = _schema_tool()
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text(render_user_data(SAMPLE) if rendered else TEMPLATE.read_text())
    env = {**os.environ, "PYTHONPATH": str(CLOUD_INIT / "root/usr/lib/python3/dist-packages")}
    done = subprocess.run(
        [*tool, str(user_data)], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid cloud-config" in done.stdout


def test_cloud_init_schema_rejects_a_broken_user_data(tmp_path: Path) -> None:
    tool = _schema_tool()
    broken = tmp_path / "broken.yaml"
    broken.write_text(render_user_data(SAMPLE).replace("runcmd:\n", "runcmd: 5\nx:\n"))
    env = {**os.environ, "PYTHONPATH": str(CLOUD_INIT / "root/usr/lib/python3/dist-packages")}
    done = subprocess.run(
        [*tool, str(broken)], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode != 0
    assert "runcmd" in done.stdout + done.stderr


# -- the systemd unit and the sleep hook ---------------------------------------------------
def verify_unit(unit_text: str, tmp_path: Path) -> str:
    """systemd-analyze verify's complaints about `unit_text` ("" when clean).

    verify insists that ExecStart's binary exists, so a copy is checked with ExecStart
    pointing at an executable placeholder in tmp_path; everything else is the real unit.
    """
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    binary = tmp_path / "spotguard"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    copy = tmp_path / "spotguard.service"
    copy.write_text(unit_text.replace("ExecStart=/usr/local/bin/spotguard", f"ExecStart={binary}"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    return (done.stdout + done.stderr).strip() or ("" if done.returncode == 0 else "failed")


@pytest.mark.parametrize("unit", [UNIT, READAHEAD_UNIT], ids=lambda p: p.name)
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, unit: Path) -> None:
    assert verify_unit(unit.read_text(), tmp_path) == ""


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("Type=notify", "Type=notfy")
    assert "Failed to parse service type" in verify_unit(broken, tmp_path)


def _unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    """Every `Key=value` of the unit, a key set more than once keeping all its values."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_lets_the_agent_do_its_job() -> None:
    unit = {key: " ".join(values) for key, values in _unit_settings().items()}
    assert unit["Type"] == "notify"
    assert unit["WatchdogSec"]
    assert unit["Restart"] == "on-failure"
    assert unit["ExecStart"] == "/usr/local/bin/spotguard --config /etc/spotguard/config.toml run"
    assert unit["ProtectSystem"] == "strict"
    assert unit["ProtectKernelTunables"] == "yes"
    # Writable under ProtectKernelTunables: the cgroup tree and exactly the files written.
    assert set(unit["ReadWritePaths"].split()) == {
        "/sys/fs/cgroup",
        "-/sys/power/image_size",
        "-/sys/power/state",
        "-/sys/power/disk",
        "-/proc/sys/vm/drop_caches",
    }
    assert unit["StateDirectory"] == "spotguard"  # /var/lib/spotguard, the state file
    assert "AF_INET" in unit["RestrictAddressFamilies"]  # the metadata service and EC2 API
    assert "AF_UNIX" in unit["RestrictAddressFamilies"]  # systemctl hibernate, NOTIFY_SOCKET


def test_unit_grants_only_the_capability_the_sleep_path_needs() -> None:
    unit = _unit_settings()
    assert unit["CapabilityBoundingSet"] == ["CAP_SYS_BOOT"]
    assert unit["AmbientCapabilities"] == [""]
    assert unit["NoNewPrivileges"] == ["yes"]
    filters = unit["SystemCallFilter"]
    assert filters[0] == "@system-service"
    assert {"@privileged", "@reboot", "@swap", "@mount", "@module"} <= set(filters[1][1:].split())


def test_the_readahead_unit_may_look_into_processes_but_reach_no_network() -> None:
    unit = _unit_settings(READAHEAD_UNIT)
    assert unit["Type"] == ["oneshot"]
    assert unit["ExecStart"][0].endswith(" readahead")
    assert set(unit["CapabilityBoundingSet"][0].split()) == {"CAP_SYS_NICE", "CAP_SYS_PTRACE"}
    assert unit["PrivateNetwork"] == ["yes"]
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX"]
    assert unit["ProtectSystem"] == ["strict"]
    assert "ReadWritePaths" not in unit  # it reads; the kernel does the rest


@pytest.mark.parametrize("unit", [UNIT, READAHEAD_UNIT], ids=lambda p: p.name)
def test_unit_exposure_is_ok_for_systemd_analyze_security(tmp_path: Path, unit: Path) -> None:
    """systemd's own score of the sandbox: 3.0 or less is "OK"."""
    binary = tmp_path / "spotguard"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    copy = tmp_path / unit.name
    copy.write_text(
        unit.read_text().replace("ExecStart=/usr/local/bin/spotguard", f"ExecStart={binary}")
    )
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=30", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    overall = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert overall is not None, done.stdout[-500:]
    assert float(overall[1]) <= 3.0


def _fake_systemctl(tmp_path: Path, active: bool) -> tuple[dict[str, str], Path]:
    """A systemctl on PATH that records its arguments: the host's agent must not be signalled."""
    log = tmp_path / "systemctl.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    status = 0 if active else 3
    fake.write_text(
        f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *is-active*) exit {status};; esac\n'
    )
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


@pytest.mark.parametrize(
    ("args", "active", "calls"),
    [
        (
            ["post", "hibernate"],
            True,
            [
                "start --no-block spotguard-readahead.service",
                "--quiet is-active spotguard.service",
                "kill --signal=SIGUSR1 --kill-whom=main spotguard.service",
            ],
        ),
        (
            ["post", "hibernate"],
            False,
            ["start --no-block spotguard-readahead.service", "--quiet is-active spotguard.service"],
        ),
        # Nothing was swapped for a suspend: no readahead.
        (["post", "suspend"], False, ["--quiet is-active spotguard.service"]),
        (["pre", "hibernate"], True, []),
    ],
)
def test_sleep_hook_signals_the_agent_after_resume(
    tmp_path: Path, args: list[str], active: bool, calls: list[str]
) -> None:
    env, log = _fake_systemctl(tmp_path, active)
    done = subprocess.run([str(SLEEP_HOOK), *args], env=env, capture_output=True, check=False)
    assert done.returncode == 0
    assert (log.read_text().splitlines() if log.exists() else []) == calls


# -- the swap script -------------------------------------------------------------------------
def _fs_type(path: Path) -> str:
    done = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False
    )
    return done.stdout.strip()


def _swap_root(tmp_path: Path, mem_kb: int = 2048000) -> Path:
    if _fs_type(tmp_path) not in ("ext2/ext3", "xfs", "btrfs"):
        pytest.skip(f"{tmp_path} is on {_fs_type(tmp_path)}, where swap files cannot live")
    root = tmp_path / "root"
    for folder in ("proc", "etc/default/grub.d", "etc/initramfs-tools/conf.d"):
        (root / folder).mkdir(parents=True)
    (root / "proc/meminfo").write_text(f"MemTotal:       {mem_kb} kB\nMemFree: 1 kB\n")
    return root


def setup_swap(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(SETUP_SWAP), "--root", str(root), "--no-activate", *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _ready(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The `ready:` line's key=value words."""
    line = next(x for x in done.stderr.splitlines() if "ready:" in x)
    return dict(w.split("=", 1) for w in line.split("ready:", 1)[1].split())


@pytest.mark.parametrize(("mem_kb", "size_mb"), [(2048000, "4000"), (8388608, "8192")])
def test_auto_size_is_ram_but_at_least_4000_mb(tmp_path: Path, mem_kb: int, size_mb: str) -> None:
    root = _swap_root(tmp_path, mem_kb)
    done = setup_swap(root, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert _ready(done)["size_mb"] == size_mb
    assert f"would run: fallocate -l {size_mb}M" in done.stdout
    assert sorted(p.name for p in root.iterdir()) == ["etc", "proc"]  # nothing made
    assert not (root / "etc/initramfs-tools/conf.d/resume").exists()
    assert "would add to" in done.stdout
    assert "update-initramfs" not in done.stdout  # only on request (--update-initramfs)


def test_swap_file_and_boot_configuration_are_made(tmp_path: Path) -> None:
    root = _swap_root(tmp_path)
    done = setup_swap(root, "--size-mb", "16", "--reserve-mb", "0")
    assert done.returncode == 0, done.stderr
    ready = _ready(done)
    swap = root / "swapfile"
    assert swap.stat().st_size == 16 << 20
    assert stat.S_IMODE(swap.stat().st_mode) == 0o600
    assert swap.read_bytes()[: os.sysconf("SC_PAGE_SIZE")].endswith(
        b"SWAPSPACE2"
    )  # mkswap's signature ends the first page
    offset = int(ready["resume_offset"])
    grub = (root / "etc/default/grub.d/99-spotguard-resume.cfg").read_text()
    assert f'resume={ready["resume"]} resume_offset={offset}"' in grub
    assert (root / "etc/initramfs-tools/conf.d/resume").read_text() == f"RESUME={ready['resume']}\n"
    assert not list(root.glob("swapfile.*"))
    assert (root / "etc/fstab").read_text() == "/swapfile none swap sw 0 0\n"
    _assert_offset_points_at(swap, Path(ready["device"]), offset)


def _assert_offset_points_at(swap: Path, device: Path, offset: int) -> None:
    """The page at resume_offset of the filesystem's device must be the file's first page.

    Read from the device where this machine allows it; else ask the kernel's FIBMAP, an
    interface independent of the FIEMAP one filefrag uses (and truthful on ext4).
    """
    page = os.sysconf("SC_PAGE_SIZE")
    first_page = swap.read_bytes()[:page]
    try:
        with device.open("rb") as disk:
            disk.seek(offset * page)
            assert disk.read(page) == first_page
    except PermissionError:
        with swap.open("rb") as file:
            answer = fcntl.ioctl(file.fileno(), FIBMAP, struct.pack("i", 0))
        block = struct.unpack("i", answer)[0]
        assert block * os.statvfs(swap).f_bsize == offset * page


def test_an_existing_big_enough_swap_file_is_kept(tmp_path: Path) -> None:
    root = _swap_root(tmp_path)
    assert setup_swap(root, "--size-mb", "16", "--reserve-mb", "0").returncode == 0
    inode = (root / "swapfile").stat().st_ino
    again = setup_swap(root, "--size-mb", "8", "--reserve-mb", "0")
    assert again.returncode == 0, again.stderr
    assert "keeping" in again.stderr
    assert (root / "swapfile").stat().st_ino == inode
    assert (root / "etc/fstab").read_text().count("/swapfile none swap") == 1


def test_no_room_is_refused_without_leaving_a_partial_file(tmp_path: Path) -> None:
    root = _swap_root(tmp_path)
    free_mb = shutil.disk_usage(root).free >> 20
    done = setup_swap(root, "--size-mb", str(free_mb + 1024))
    assert done.returncode == 1
    assert "REFUSED: no room" in done.stderr
    assert not list(root.glob("swapfile*"))
    assert not (root / "etc/default/grub.d/99-spotguard-resume.cfg").exists()


def test_a_filesystem_without_a_trustworthy_block_map_is_refused(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or _fs_type(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    root = Path(shutil.copytree(_swap_root(tmp_path), shm / f"spotguard-test-{os.getpid()}"))
    try:
        done = setup_swap(root, "--size-mb", "4")
        assert done.returncode == 1
        assert "on tmpfs" in done.stderr
        assert not list(root.glob("swapfile*"))
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("args", [["--bogus"], ["--size-mb", "lots"], ["--file", "relative"]])
def test_bad_usage_exits_2(tmp_path: Path, args: list[str]) -> None:
    assert setup_swap(_swap_root(tmp_path), *args).returncode == 2


# -- the install script ----------------------------------------------------------------------
def _wheel(wheels: Path, name: str, version: str, requires: str = "", module: str = "") -> Path:
    """A minimal wheel; `module` with a `main` becomes the `spotguard` command."""
    info = f"{name}-{version}.dist-info"
    path = wheels / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        requires_line = f"Requires-Dist: {requires}\n" if requires else ""
        whl.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires_line}",
        )
        whl.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        if module:
            whl.writestr(f"{module}.py", "def main() -> None:\n    print('probe ok')\n")
            whl.writestr(
                f"{info}/entry_points.txt", f"[console_scripts]\nspotguard = {module}:main\n"
            )
        whl.writestr(f"{info}/RECORD", "")
    return path


def _wheelhouse(tmp_path: Path) -> Path:
    """spotguard 9.9.9 (a `spotguard` command) and the one dependency it requires."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "spotguard", "9.9.9", requires="spotguard-dep==1.0", module="spotguard_probe")
    _wheel(wheels, "spotguard_dep", "1.0")
    return wheels


def _run_lock(wheels: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOCK), str(wheels)], capture_output=True, text=True, check=False
    )


def lock_for(wheels: Path) -> str:
    """The hash-pinned lock of a wheelhouse (cloud-init/lock.py): the spotguard_lock value."""
    done = _run_lock(wheels)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _lock(wheels: Path, tmp_path: Path) -> Path:
    lock = tmp_path / "spotguard.lock"
    lock.write_text(lock_for(wheels))
    return lock


def _install(*args: Path | str) -> subprocess.CompletedProcess[str]:
    # No site configuration or PIP_* settings: offline for real.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return subprocess.run(
        [str(INSTALL), *map(str, args)], capture_output=True, text=True, env=env, check=False
    )


def test_lock_pins_every_wheel_of_the_folder_by_version_and_hash(tmp_path: Path) -> None:
    wheels = _wheelhouse(tmp_path)
    lines = _lock(wheels, tmp_path).read_text().splitlines()
    digest = hashlib.sha256((wheels / "spotguard-9.9.9-py3-none-any.whl").read_bytes())
    assert lines == [
        f"spotguard==9.9.9 --hash=sha256:{digest.hexdigest()}",
        "spotguard-dep==1.0 --hash=sha256:"
        + hashlib.sha256((wheels / "spotguard_dep-1.0-py3-none-any.whl").read_bytes()).hexdigest(),
    ]


@pytest.mark.parametrize(
    ("extra", "error"), [(None, "no spotguard wheel"), ("spotguard_dep-2.0", "two wheels")]
)
def test_lock_refuses_a_folder_that_is_not_one_release(
    tmp_path: Path, extra: str | None, error: str
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "spotguard_dep", "1.0")
    if extra:
        _wheel(wheels, "spotguard", "9.9.9")
        name, version = extra.split("-")
        _wheel(wheels, name, version)
    done = _run_lock(wheels)
    assert done.returncode == 1
    assert error in done.stderr


def test_install_the_locked_release_offline_and_link_the_command(tmp_path: Path) -> None:
    wheels = _wheelhouse(tmp_path)
    lock = _lock(wheels, tmp_path)
    venv, link = tmp_path / "opt/spotguard", tmp_path / "bin/spotguard"
    done = _install(wheels, lock, venv, link)
    assert done.returncode == 0, done.stderr
    assert "spotguard-install: 9.9.9 in" in done.stderr
    assert os.readlink(link) == str(venv / "bin/spotguard")
    ran = subprocess.run([str(link)], capture_output=True, text=True, check=True)
    assert ran.stdout == "probe ok\n"
    # Run again (first boot after a bake): the same lock keeps the venv as it is.
    marker = venv / "kept"
    marker.touch()
    again = _install(wheels, lock, venv, link)
    assert again.returncode == 0, again.stderr
    assert "already holds this lock" in again.stderr
    assert marker.exists()


def test_a_venv_from_anything_but_this_lock_is_made_afresh(tmp_path: Path) -> None:
    wheels = _wheelhouse(tmp_path)
    venv = tmp_path / "opt/spotguard"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (venv / "planted").touch()  # e.g. an image's venv installed some other way
    done = _install(wheels, _lock(wheels, tmp_path), venv, tmp_path / "bin/spotguard")
    assert done.returncode == 0, done.stderr
    assert not (venv / "planted").exists()
    assert (venv / ".spotguard-lock.sha256").is_file()


def test_a_wheel_whose_bytes_differ_from_the_lock_is_refused(tmp_path: Path) -> None:
    wheels = _wheelhouse(tmp_path)
    lock = _lock(wheels, tmp_path)
    dep = wheels / "spotguard_dep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(dep, "a") as whl:  # the same name and version, other bytes
        whl.writestr("spotguard_dep_payload.py", "import os\n")
    done = _install(wheels, lock, tmp_path / "venv", tmp_path / "bin/spotguard")
    assert done.returncode != 0
    assert "DO NOT MATCH THE HASHES" in done.stderr
    assert not (tmp_path / "bin/spotguard").exists()


def test_a_dependency_the_lock_does_not_pin_is_refused(tmp_path: Path) -> None:
    wheels = _wheelhouse(tmp_path)
    lock = _lock(wheels, tmp_path)
    lock.write_text(lock.read_text().splitlines()[0] + "\n")  # spotguard only
    done = _install(wheels, lock, tmp_path / "venv", tmp_path / "bin/spotguard")
    assert done.returncode != 0
    assert "spotguard-dep" in done.stderr
    assert "hash" in done.stderr.lower()


@pytest.mark.parametrize(
    ("lock_text", "source", "error"),
    [
        ("spotguard\n", None, "pins no spotguard==VERSION"),
        ("spotguard==9.9.9\n", None, "pins no spotguard==VERSION"),
        (None, "spotguard==9.9.9", "SOURCE must be a directory of wheels or an http(s) index"),
    ],
)
def test_floating_names_and_unknown_sources_are_refused(
    tmp_path: Path, lock_text: str | None, source: str | None, error: str
) -> None:
    wheels = _wheelhouse(tmp_path)
    lock = _lock(wheels, tmp_path)
    if lock_text is not None:
        lock.write_text(lock_text)
    done = _install(source or wheels, lock, tmp_path / "venv", tmp_path / "bin/spotguard")
    assert done.returncode == 2
    assert error in done.stderr
    assert not (tmp_path / "venv").exists()


def test_user_data_with_a_release_sized_lock_fits_ec2s_16_kb() -> None:
    """A release is ~15 wheels (spotguard, boto3, botocore, requests, ...), one hash each.
    The Terraform module sends it gzipped (base64gzip), as cloud-init reads it."""
    lock = "".join(f"package-name-{i:02}==10.20.{i} --hash=sha256:{i:064x}\n" for i in range(18))
    text = render_user_data({**SAMPLE, "spotguard_lock": lock, "config_toml": "[agent]\n" * 10})
    assert len(gzip.compress(text.encode())) <= 16384 // 2  # room to grow
