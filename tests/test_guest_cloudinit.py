"""End to end in a Debian guest: cloud-init runs our user-data for real, then a spot notice.

Boot 1: QEMU looks like EC2 (SMBIOS), so the guest's cloud-init picks its Ec2 datasource and
crawls the metadata simulator on the host (through the testbed's guestfwd relay) for the
rendered user-data. It installs spotguard, makes the swap file, writes the config and starts
the unit. The simulator then announces a stop; the agent (hibernate.mode = "local")
hibernates the guest into the swap file and QEMU exits. Boot 2 passes the resume= and
resume_offset= the swap script printed on the console (direct kernel boot has no bootloader
to carry them), the kernel resumes the image, the sleep hook starts the readahead unit and
signals the agent, and the agent reports hibernate.resumed, is armed again and handles the
next notice. Every step is logged with its time; the consoles are kept in the test's
tmp_path.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from spotguard.simulator import MetadataSimulator, SimulatedInstance
from testbed.guest import BaseImage, Disks, Ec2Identity, Guest, ImdsNetwork
from tests.test_cloudinit import lock_for, render_user_data

pytestmark = pytest.mark.guest

BAKE = Path(__file__).resolve().parents[1] / "bake" / "bake-image.sh"
QEMU_MAC = "52:54:00:12:34:56"  # QEMU's default NIC address: the simulator's network config
SETUP_TIMEOUT = 420.0  # boot + cloud-init + offline pip install + update-initramfs, under TCG
STEP_TIMEOUT = 240.0
READY = r"spotguard-setup-swap: ready: "


def _event(name: str) -> str:
    """A console pattern for one of the agent's JSON log lines (structlog's "event" key)."""
    return rf'"event": ?"{re.escape(name)}"'


def post_notice(simulator: str) -> str:
    """What EC2 does two minutes before it stops a spot instance; a console pattern for the
    agent's notice.received line of exactly this notice."""
    deadline = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
    answer = requests.post(
        f"{simulator}/simulator/notice", json={"action": "stop", "time": deadline}, timeout=5
    )
    assert answer.ok, answer.text
    return re.escape(f'"id": "spot-itn:stop:{deadline}"') + ".*" + _event("notice.received")


# A test-only step after the user-data's own: what the kernel says of the unit's main process.
PROBE = (
    'pid=$(systemctl show --property=MainPID --value spotguard.service); echo "spotguard-probe:'
    " $(grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/$pid/status | tr -s '\\t\\n' '  ')\""
)
CAP_SYS_BOOT_ONLY = f"{1 << 22:016x}"  # the unit's CapabilityBoundingSet, as /proc shows it


def with_probe(user_data: str) -> str:
    data = yaml.safe_load(user_data)
    data["runcmd"].append(["sh", "-c", PROBE])
    return "#cloud-config\n" + yaml.safe_dump(data, sort_keys=False)


def _words(text: str) -> dict[str, str]:
    return {key: value for key, _, value in (w.partition("=") for w in text.split())}


def _wheelhouse(guest_image: BaseImage) -> Path:
    """The testbed's wheelhouse, the cache entry next to the image; /opt/wheels in the guest."""
    wheels = sorted(guest_image.root.parent.glob("wheels-*"))
    if not wheels:
        pytest.skip(f"no wheelhouse in {guest_image.root.parent}")
    return wheels[-1]


def test_user_data_sets_up_spotguard_which_hibernates_and_resumes(
    guest_image: BaseImage, tmp_path: Path
) -> None:
    wheels = _wheelhouse(guest_image)
    lock = lock_for(wheels)
    lock_sha = hashlib.sha256(lock.encode()).hexdigest()
    user_data = render_user_data(
        {
            # The testbed's wheelhouse, installed offline and only if every hash matches; the
            # image's own /opt/spotguard holds no lock stamp, so it is made afresh.
            "spotguard_source": "/opt/wheels",
            "spotguard_lock": lock,
            "hibernate_mode": "local",
            # Inside the guest only, where QEMU's guestfwd relays it to the host's 127.0.0.1.
            "imds_url": "http://169.254.169.254",
            "swap_mb": "0",  # auto: max(RAM, 4000 MB)
            "config_toml": "[agent]\npoll_interval = 1\n",
        }
    )
    began = time.monotonic()

    def step(what: str, **fields: object) -> None:
        words = " ".join(f"{k}={v}" for k, v in fields.items())
        print(f"[{time.monotonic() - began:6.1f} s] {what} {words}".rstrip(), flush=True)

    disks = Disks.create(guest_image, tmp_path / "disks")
    instance = SimulatedInstance(mac=QEMU_MAC)
    try:
        # Gzipped, as the Terraform module sends it (base64gzip): cloud-init unpacks it.
        probed = gzip.compress(with_probe(user_data).encode())
        with MetadataSimulator(instance=instance, user_data=probed) as sim:
            network = ImdsNetwork(int(sim.url.rsplit(":", 1)[1]))
            identity = Ec2Identity()
            with Guest.boot(
                guest_image, disks, tmp_path, network=network, identity=identity, name="setup"
            ) as guest:
                step("boot 1: cloud-init, Ec2 datasource", simulator=sim.url, logs=tmp_path)
                installed = guest.wait_for(
                    rf"spotguard-install: \S+ in /opt/spotguard \(lock {lock_sha}\)", SETUP_TIMEOUT
                )
                step("installed from the lock, hashes checked", line=installed.text.strip())
                ready = guest.wait_for(READY, SETUP_TIMEOUT)
                fields = _words(ready.text.split("ready:", 1)[1])
                step("swap ready", **fields)
                assert int(fields["size_mb"]) >= 4000
                assert int(fields["resume_offset"]) > 0
                started = guest.wait_for(_event("agent.started"), STEP_TIMEOUT)
                assert '"mode": "local"' in started.text
                step("agent started under systemd")
                probed_line = guest.wait_for(r"spotguard-probe: Cap", STEP_TIMEOUT).text
                probe = dict(
                    re.findall(r"(CapBnd|CapEff|NoNewPrivs|Seccomp):\s+(\w+)", probed_line)
                )
                step("the unit's sandbox", **probe)
                assert probe == {
                    "CapBnd": CAP_SYS_BOOT_ONLY,
                    "CapEff": CAP_SYS_BOOT_ONLY,
                    "NoNewPrivs": "1",
                    "Seccomp": "2",  # a filter: SystemCallFilter is in force
                }

                notice = post_notice(sim.url)
                step("spot notice posted: stop in 120 s")
                guest.wait_for(notice, STEP_TIMEOUT, started.index)
                step("agent saw the notice")
                guest.wait_for(_event("hibernate.issued"), STEP_TIMEOUT, started.index)
                step("agent issued the hibernation")
                guest.wait_exit(STEP_TIMEOUT)
                step("QEMU exited: the image is written")
            requests.delete(f"{sim.url}/simulator/notice", timeout=5)  # gone after the stop
            resume = [f"resume={fields['resume']}", f"resume_offset={fields['resume_offset']}"]
            with Guest.boot(
                guest_image,
                disks,
                tmp_path,
                cmdline=resume,
                network=network,
                identity=identity,
                name="resume",
            ) as guest:
                step("boot 2", cmdline=" ".join(resume))
                guest.wait_for(
                    r"PM: (Image signature found|Image loading done|hibernation: Read)",
                    STEP_TIMEOUT,
                )
                step("kernel restored the image")
                resumed = guest.wait_for(_event("hibernate.resumed"), STEP_TIMEOUT)
                step("agent reports hibernate.resumed", line=resumed.text.strip()[-80:])
                # The hook's readahead, in its own sandbox: process_madvise allowed there.
                readahead = guest.wait_for(
                    f"{_event('readahead.done')}|{_event('readahead.unavailable')}", STEP_TIMEOUT
                )
                assert "readahead.done" in readahead.text, readahead.text
                step("readahead ran after resume", line=readahead.text.strip()[-100:])
                # The same agent process went on: nothing booted afresh.
                assert guest.console.find(_event("agent.started")) is None
                notice = post_notice(sim.url)
                step("a second notice posted")
                guest.wait_for(notice, STEP_TIMEOUT, resumed.index)
                step("the resumed agent handles it")
                armed = guest.wait_for(_event("agent.armed"), 10, resumed.index)
                step("agent was armed again before it", line=armed.text.strip()[-80:])
    finally:
        disks.remove()


def test_bake_into_a_debian_root_folder(guest_image: BaseImage, tmp_path: Path) -> None:
    """bake/bake-image.sh --rootfs on a copy of the testbed's OS layer (debootstrap + cloud-init).

    The layer and wheelhouse folders are the testbed's cache entries next to the image.
    """
    cache = guest_image.root.parent
    layers, wheels = sorted(cache.glob("rootfs-*")), _wheelhouse(guest_image)
    if not layers:
        pytest.skip(f"no OS layer in {cache}")
    root = tmp_path / "rootfs"  # 700+ MB: removed at the end, not kept for pytest
    try:
        subprocess.run(["cp", "-a", "--reflink=auto", str(layers[-1]), str(root)], check=True)
        shutil.copytree(wheels, root / "opt/wheels")
        user_data = tmp_path / "user-data.yaml"
        user_data.write_text(
            render_user_data(
                {
                    "spotguard_source": "/opt/wheels",  # as seen inside the folder
                    "spotguard_lock": lock_for(wheels),
                    "hibernate_mode": "ec2",
                    "imds_url": "http://169.254.169.254",
                    "swap_mb": "0",
                    "config_toml": "",
                }
            )
        )
        done = subprocess.run(
            [str(BAKE), "--rootfs", str(root), str(user_data)],
            capture_output=True,
            text=True,
            check=False,
        )
        print(done.stderr[-3000:])
        assert done.returncode == 0, done.stderr[-3000:]
        assert "baked spotguard-" in done.stderr
        assert "swap file is made at first boot" in done.stderr
        assert not (root / "swapfile").exists()  # offsets would not survive the copy to a disk
        wants = root / "etc/systemd/system/multi-user.target.wants/spotguard.service"
        assert os.readlink(wants) == "/etc/systemd/system/spotguard.service"
        assert os.readlink(root / "usr/local/bin/spotguard") == "/opt/spotguard/bin/spotguard"
        assert 'hibernate.mode = "ec2"' in (root / "etc/spotguard/config.toml").read_text()
        assert (root / "usr/lib/systemd/system-sleep/spotguard").stat().st_mode & 0o111
        assert not list((root / "var/lib/cloud").iterdir())  # cleaned: first boot is a first boot
        assert not (root / "etc/machine-id").exists()
        assert str(root) not in Path("/proc/self/mounts").read_text()  # the bind mounts are gone
    finally:
        shutil.rmtree(root, ignore_errors=True)
