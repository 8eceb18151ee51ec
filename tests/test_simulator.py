"""The simulator answers like the real metadata service, seen with a plain HTTP client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from spotguard.clock import FakeClock
from spotguard.imds import TOKEN_HEADER, TOKEN_PATH, TTL_HEADER, ImdsClient, format_rfc3339
from spotguard.simulator import MetadataSimulator, SimulatedInstance, scheduled_event
from tests.fixtures_imds import fast_config

TIMEOUT = 2.0
META = "/latest/meta-data"


def token(sim: MetadataSimulator, ttl: str = "21600") -> str:
    answer = requests.put(sim.url + TOKEN_PATH, headers={TTL_HEADER: ttl}, timeout=TIMEOUT)
    assert answer.status_code == 200
    return answer.text


def get(sim: MetadataSimulator, path: str, tok: str | None = None) -> requests.Response:
    headers = {TOKEN_HEADER: tok if tok is not None else token(sim)}
    return requests.get(sim.url + path, headers=headers, timeout=TIMEOUT)


def control(
    sim: MetadataSimulator,
    method: str,
    route: str,
    json: object = None,
    data: bytes | None = None,
) -> requests.Response:
    url = f"{sim.url}/simulator/{route}"
    return requests.request(method, url, json=json, data=data, timeout=TIMEOUT)


@pytest.mark.parametrize("ttl", ["", "0", "21601", "ten", "-5"])
def test_token_ttl_out_of_range_is_400(simulator: MetadataSimulator, ttl: str) -> None:
    headers = {TTL_HEADER: ttl} if ttl else {}
    answer = requests.put(simulator.url + TOKEN_PATH, headers=headers, timeout=TIMEOUT)
    assert answer.status_code == 400


def test_token_answer_echoes_ttl(simulator: MetadataSimulator) -> None:
    answer = requests.put(simulator.url + TOKEN_PATH, headers={TTL_HEADER: "1"}, timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.headers[TTL_HEADER] == "1"
    assert len(answer.text) >= 32


def test_forwarded_token_request_is_refused(simulator: MetadataSimulator) -> None:
    headers = {TTL_HEADER: "60", "X-Forwarded-For": "10.0.0.1"}
    answer = requests.put(simulator.url + TOKEN_PATH, headers=headers, timeout=TIMEOUT)
    assert answer.status_code == 403


def test_gets_need_a_live_token(simulator: MetadataSimulator, sim_clock: FakeClock) -> None:
    path = f"{META}/instance-id"
    assert requests.get(simulator.url + path, timeout=TIMEOUT).status_code == 401
    assert get(simulator, path, "bogus").status_code == 401
    tok = token(simulator, "30")
    assert get(simulator, path, tok).text == "i-0123456789abcdef0"
    sim_clock.advance(31)
    assert get(simulator, path, tok).status_code == 401
    tok = token(simulator)
    simulator.expire_tokens()
    assert get(simulator, path, tok).status_code == 401


def test_v1_allowed_accepts_no_token_but_not_a_bad_one() -> None:
    with MetadataSimulator(v1_allowed=True) as sim:
        path = sim.url + f"{META}/instance-id"
        assert requests.get(path, timeout=TIMEOUT).text == "i-0123456789abcdef0"
        bad = requests.get(path, headers={TOKEN_HEADER: "bogus"}, timeout=TIMEOUT)
        assert bad.status_code == 401


def test_service_without_v2_refuses_the_token_put() -> None:
    with MetadataSimulator(v2=False) as sim:
        put = requests.put(sim.url + TOKEN_PATH, headers={TTL_HEADER: "60"}, timeout=TIMEOUT)
        assert put.status_code == 405
        assert requests.get(sim.url + f"{META}/instance-id", timeout=TIMEOUT).status_code == 200


def test_spot_notice_lifecycle(simulator: MetadataSimulator, sim_clock: FakeClock) -> None:
    path = f"{META}/spot/instance-action"
    missing = get(simulator, path)
    assert missing.status_code == 404
    assert "<html" in missing.text
    assert "spot/" not in get(simulator, f"{META}/").text.splitlines()

    simulator.set_notice("hibernate", in_seconds=120)
    first_seen = sim_clock.wall()
    notice = json.loads(get(simulator, path).content)
    assert notice == {"action": "hibernate", "time": format_rfc3339(first_seen + 120)}
    sim_clock.advance(30)  # pinned: the same time on later polls
    assert json.loads(get(simulator, path).content) == notice
    assert get(simulator, f"{META}/spot/termination-time").text == notice["time"]
    assert "spot/" in get(simulator, f"{META}/").text.splitlines()
    assert simulator.served_at("spot/instance-action") == first_seen

    simulator.set_notice("stop", moving=True)
    assert simulator.served_at("spot/instance-action") is None
    moving = json.loads(get(simulator, path).content)
    sim_clock.advance(10)
    assert json.loads(get(simulator, path).content)["time"] != moving["time"]

    simulator.clear_notice()
    assert get(simulator, path).status_code == 404


def test_rebalance_scheduled_lifecycle_and_hibernation(simulator: MetadataSimulator) -> None:
    rebalance = f"{META}/events/recommendations/rebalance"
    assert get(simulator, rebalance).status_code == 404
    simulator.set_rebalance(1_800_000_000.0)
    assert json.loads(get(simulator, rebalance).content) == {"noticeTime": "2027-01-15T08:00:00Z"}

    scheduled = f"{META}/events/maintenance/scheduled"
    assert json.loads(get(simulator, scheduled).content) == []
    event = scheduled_event("instance-stop", 1_800_000_000.0, event_id="instance-event-1")
    simulator.set_scheduled([event])
    served = json.loads(get(simulator, scheduled).content)
    assert served == [event]
    assert served[0]["NotBefore"] == "15 Jan 2027 08:00:00 GMT"

    lifecycle = f"{META}/autoscaling/target-lifecycle-state"
    assert get(simulator, lifecycle).status_code == 404
    simulator.set_lifecycle("InService")
    assert get(simulator, lifecycle).text == "InService"

    assert get(simulator, f"{META}/hibernation/configured").text == "true"
    simulator.hibernation_configured = False
    assert get(simulator, f"{META}/hibernation/configured").text == "false"


def test_user_data_and_identity_document(simulator: MetadataSimulator) -> None:
    assert get(simulator, "/latest/user-data").status_code == 404
    assert "user-data" not in get(simulator, "/latest/").text.splitlines()
    simulator.set_user_data(b"#cloud-config\n\xe2\x9c\x93\n")
    assert get(simulator, "/latest/user-data").content == b"#cloud-config\n\xe2\x9c\x93\n"
    document = json.loads(get(simulator, "/latest/dynamic/instance-identity/document").content)
    assert document["instanceId"] == "i-0123456789abcdef0"
    assert document["region"] == "us-east-1"
    assert document["availabilityZone"] == "us-east-1a"


def test_listings_and_version_prefixes(simulator: MetadataSimulator) -> None:
    versions = get(simulator, "/").text.splitlines()
    assert {"latest", "2009-04-04"} <= set(versions)
    listing = get(simulator, f"{META}/").text.splitlines()
    assert {"instance-id", "placement/", "network/", "events/", "hibernation/"} <= set(listing)
    assert get(simulator, f"{META}/placement").text == "availability-zone\nregion"
    for version in ("2009-04-04", "2021-03-23"):
        assert get(simulator, f"/{version}/meta-data/instance-id").text == "i-0123456789abcdef0"
    assert get(simulator, "/2042-01-01/meta-data/instance-id").status_code == 404
    assert get(simulator, f"{META}/instance-id/extra").status_code == 404
    mac = get(simulator, f"{META}/mac").text
    nic = get(simulator, f"{META}/network/interfaces/macs/{mac}/").text.splitlines()
    assert {"device-number", "local-ipv4s", "mac"} <= set(nic)


def test_instance_description_is_configurable() -> None:
    instance = SimulatedInstance(instance_id="i-abc", region="eu-west-1", life_cycle="on-demand")
    with MetadataSimulator(instance=instance) as sim:
        assert get(sim, f"{META}/placement/availability-zone").text == "eu-west-1a"
        assert get(sim, f"{META}/instance-life-cycle").text == "on-demand"
        assert get(sim, f"{META}/hostname").text.endswith(".eu-west-1.compute.internal")


def test_faults_apply_to_the_next_n_requests(simulator: MetadataSimulator) -> None:
    tok = token(simulator)
    path = f"{META}/instance-id"
    simulator.set_fault("error_503", 2)
    assert [get(simulator, path, tok).status_code for _ in range(3)] == [503, 503, 200]
    simulator.set_fault("error_500", 1)
    assert get(simulator, path, tok).status_code == 500
    simulator.set_fault("garbage", 1)
    assert get(simulator, path, tok).content.startswith(b"\x00")
    simulator.set_fault("not_found", path=f"{META}/placement/")
    assert get(simulator, path, tok).status_code == 200
    assert get(simulator, f"{META}/placement/region", tok).status_code == 404
    simulator.set_fault("disabled")
    assert get(simulator, path, tok).status_code == 403
    simulator.clear_faults()
    assert get(simulator, path, tok).status_code == 200
    with pytest.raises(ValueError, match="unknown fault"):
        simulator.set_fault("gremlins")


def test_timeout_fault_holds_the_request(simulator: MetadataSimulator) -> None:
    tok = token(simulator)
    simulator.set_fault("timeout", 1)
    with pytest.raises(requests.Timeout):
        requests.get(
            simulator.url + f"{META}/instance-id", headers={TOKEN_HEADER: tok}, timeout=0.3
        )
    # Other requests are not blocked by the held one.
    assert get(simulator, f"{META}/instance-id", tok).status_code == 200
    simulator.set_fault("token_timeout", 1)
    with pytest.raises(requests.Timeout):
        requests.put(simulator.url + TOKEN_PATH, headers={TTL_HEADER: "60"}, timeout=0.3)
    assert simulator.count(status=0) == 2


def test_stop_releases_held_requests() -> None:
    sim = MetadataSimulator(v1_allowed=True, hold=60.0).start()
    sim.set_fault("timeout")
    outcome: list[str] = []

    def held() -> None:
        try:
            requests.get(sim.url + f"{META}/instance-id", timeout=120)
        except requests.ConnectionError:
            outcome.append("dropped")

    thread = threading.Thread(target=held)
    thread.start()
    while sim.count() == 0:
        threading.Event().wait(0.01)
    sim.stop()
    thread.join(30)
    assert outcome == ["dropped"]


def test_http_control_routes(simulator: MetadataSimulator, sim_clock: FakeClock) -> None:
    assert control(simulator, "POST", "notice", json={"action": "stop", "in_seconds": 60}).ok
    action = json.loads(get(simulator, f"{META}/spot/instance-action").content)
    assert action == {"action": "stop", "time": format_rfc3339(sim_clock.wall() + 60)}
    pinned = {"action": "terminate", "time": "2027-01-15T08:00:00Z"}
    control(simulator, "POST", "notice", json=pinned)
    action = json.loads(get(simulator, f"{META}/spot/instance-action").content)
    assert action["time"] == "2027-01-15T08:00:00Z"
    control(simulator, "DELETE", "notice")
    assert get(simulator, f"{META}/spot/instance-action").status_code == 404

    control(simulator, "POST", "rebalance")
    assert get(simulator, f"{META}/events/recommendations/rebalance").ok
    control(simulator, "POST", "lifecycle", json={"state": "Terminated"})
    assert get(simulator, f"{META}/autoscaling/target-lifecycle-state").text == "Terminated"
    control(simulator, "POST", "scheduled", json=[scheduled_event("system-reboot", 1.8e9)])
    assert "system-reboot" in get(simulator, f"{META}/events/maintenance/scheduled").text
    control(simulator, "POST", "hibernation", json={"configured": False})
    assert get(simulator, f"{META}/hibernation/configured").text == "false"
    control(simulator, "POST", "user-data", data=b"#!/bin/sh\n")
    assert get(simulator, "/latest/user-data").content == b"#!/bin/sh\n"

    fault = {"name": "error_503", "count": 1, "path": f"{META}/instance-id"}
    control(simulator, "POST", "fault", json=fault)
    assert get(simulator, f"{META}/instance-id").status_code == 503
    control(simulator, "POST", "clear")
    assert get(simulator, f"{META}/events/recommendations/rebalance").status_code == 404
    assert get(simulator, f"{META}/autoscaling/target-lifecycle-state").status_code == 404

    stats = control(simulator, "GET", "requests").json()
    row = {"method": "GET", "path": f"{META}/instance-id", "status": 503, "count": 1}
    assert row in stats["requests"]
    assert stats["served_at"] == {"hibernation/configured": sim_clock.wall()}  # clear forgot


def test_http_control_rejects_bad_input(simulator: MetadataSimulator) -> None:
    assert control(simulator, "POST", "notice", data=b"{nope").status_code == 400
    assert control(simulator, "POST", "fault", json={"name": "gremlins"}).status_code == 400
    assert control(simulator, "POST", "hibernation", json={"configured": "yes"}).status_code == 400
    unknown = control(simulator, "POST", "reboot")
    assert unknown.status_code == 404
    assert "/simulator/notice" in unknown.text
    assert simulator.count() == 0  # control requests are not metadata requests


def test_module_entry_point_serves_until_sigterm(tmp_path: Path) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_bytes(b"#cloud-config\n")
    args = [
        *("--port", "0", "--instance-id", "i-cli", "--region", "ap-south-1"),
        *("--user-data", str(user_data), "--hibernation-configured", "false"),
    ]
    command = [sys.executable, "-m", "spotguard.simulator", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            client = ImdsClient(fast_config(url), clock=FakeClock())
            assert client.get_text(f"{META}/instance-id") == "i-cli"
            assert client.get_text(f"{META}/placement/region") == "ap-south-1"
            assert client.get_text(f"{META}/hibernation/configured") == "false"
            assert client.get_bytes("/latest/user-data") == b"#cloud-config\n"
        finally:
            process.terminate()
        assert process.wait(timeout=30) == 0
