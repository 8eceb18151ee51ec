"""End to end in a Debian guest: cloud-init runs our user-data for real, then a spot notice.

Boot 1: QEMU looks like EC2 (SMBIOS), so the guest's cloud-init picks its Ec2 datasource and
crawls the metadata simulator on the host (through the testbed's guestfwd relay) for the
rendered user-data. It installs spotguard, makes the swap file, writes the config and starts
the unit. The simulator then announces a stop; the agent (hibernate.mode = "local")
hibernates the guest into the swap file and QEMU exits. Boot 2 passes the resume= and
resume_offset= the swap script printed on the console (direct kernel boot has no bootloader
to carry them), the kernel resumes the image, the sleep hook signals the agent, and the
agent reports hibernate.resumed and is armed again. Every step is logged with its time.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import requests

from spotguard.simulator import MetadataSimulator, SimulatedInstance
from testbed.guest import BaseImage, Disks, Ec2Identity, Guest, ImdsNetwork
from tests.test_cloudinit import render_user_data

pytestmark = pytest.mark.guest

QEMU_MAC = "52:54:00:12:34:56"  # QEMU's default NIC address: the simulator's network config
SETUP_TIMEOUT = 420.0  # boot + cloud-init + offline pip install + update-initramfs, under TCG
STEP_TIMEOUT = 240.0
READY = r"spotguard-setup-swap: ready: "


def _event(name: str) -> str:
    """A console pattern for one of the agent's JSON log lines (structlog's "event" key)."""
    return rf'"event": ?"{re.escape(name)}"'


def _words(text: str) -> dict[str, str]:
    return {key: value for key, _, value in (w.partition("=") for w in text.split())}


def test_user_data_sets_up_spotguard_which_hibernates_and_resumes(
    guest_image: BaseImage, tmp_path: Path
) -> None:
    user_data = render_user_data(
        {
            "spotguard_package": "/opt/wheels",  # the testbed's wheelhouse: offline install
            "hibernate_mode": "local",
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
        with MetadataSimulator(instance=instance, user_data=user_data.encode()) as sim:
            network = ImdsNetwork(int(sim.url.rsplit(":", 1)[1]))
            identity = Ec2Identity()
            with Guest.boot(
                guest_image, disks, tmp_path, network=network, identity=identity, name="setup"
            ) as guest:
                step("boot 1: cloud-init, Ec2 datasource", simulator=sim.url, logs=tmp_path)
                ready = guest.wait_for(READY, SETUP_TIMEOUT)
                fields = _words(ready.text.split("ready:", 1)[1])
                step("swap ready", **fields)
                assert int(fields["size_mb"]) >= 4000
                assert int(fields["resume_offset"]) > 0
                started = guest.wait_for(_event("agent.started"), STEP_TIMEOUT)
                assert '"mode": "local"' in started.text
                step("agent started under systemd")

                answer = requests.post(
                    f"{sim.url}/simulator/notice",
                    json={"action": "stop", "in_seconds": 120},
                    timeout=5,
                )
                assert answer.ok, answer.text
                step("spot notice posted: stop in 120 s")
                guest.wait_for(_event("notice.received"), STEP_TIMEOUT, started.index)
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
                armed = guest.wait_for(_event("agent.armed"), STEP_TIMEOUT, resumed.index)
                step("agent armed again", line=armed.text.strip()[-80:])
                # The same agent process went on: nothing booted afresh.
                assert guest.console.find(_event("agent.started")) is None
    finally:
        disks.remove()
