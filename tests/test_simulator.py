"""The simulator answers like the real metadata service, seen with a plain HTTP client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from botocore.utils import InstanceMetadataFetcher

from spotguard.clock import FakeClock
from spotguard.imds import (
    TOKEN_HEADER,
    TOKEN_PATH,
    TTL_HEADER,
    ImdsClient,
    format_rfc3339,
    parse_event_time,
)
from spotguard.simulator import (
    AWS_MOCK,
    BAD_EVENT_TIME,
    BAD_TIME,
    BAD_TOKENS,
    HUGE_SIZE,
    MOCK_EVENT_ID,
    MetadataSimulator,
    Quirks,
    SimulatedInstance,
    scheduled_event,
)
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


# -- peers: AWS's metadata mock ------------------------------------------------------------


def test_aws_mock_moves_notice_and_rebalance_times(
    aws_mock: MetadataSimulator, sim_clock: FakeClock
) -> None:
    aws_mock.set_notice("stop")
    aws_mock.set_rebalance()
    seen = []
    for _ in range(2):
        action = requests.get(aws_mock.url + f"{META}/spot/instance-action", timeout=TIMEOUT)
        rebalance = requests.get(
            aws_mock.url + f"{META}/events/recommendations/rebalance", timeout=TIMEOUT
        )
        assert action.headers["Content-Type"] == "application/json"
        assert "\n\t" in action.text  # tab-indented, as the mock's encoder writes it
        seen.append((action.json()["time"], rebalance.json()["noticeTime"]))
        sim_clock.advance(7)
    start = sim_clock.wall() - 14
    assert seen == [
        (format_rfc3339(start + 120), format_rfc3339(start)),
        (format_rfc3339(start + 127), format_rfc3339(start + 7)),
    ]
    aws_mock.set_notice("stop", start + 500)  # pinned, as with the mock's -t
    for _ in range(2):
        sim_clock.advance(3)
        answer = requests.get(aws_mock.url + f"{META}/spot/instance-action", timeout=TIMEOUT)
        assert answer.json()["time"] == format_rfc3339(start + 500)


def test_aws_mock_pages_paths_and_tokens(aws_mock: MetadataSimulator, sim_clock: FakeClock) -> None:
    started = sim_clock.wall()
    sim_clock.advance(600)
    missing = requests.get(aws_mock.url + f"{META}/hibernation/configured", timeout=TIMEOUT)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert missing.headers["X-Content-Type-Options"] == "nosniff"
    assert missing.text.startswith("<?xml")
    assert "404 - Not Found" in missing.text
    # Tokens are not enforced: no token, a bogus one and a forwarded PUT all pass.
    assert requests.get(aws_mock.url + f"{META}/instance-id", timeout=TIMEOUT).ok
    assert get(aws_mock, f"{META}/instance-id", "bogus").ok
    forwarded = {TTL_HEADER: "60", "X-Forwarded-For": "10.0.0.1"}
    assert requests.put(aws_mock.url + TOKEN_PATH, headers=forwarded, timeout=TIMEOUT).ok
    empty = requests.get(aws_mock.url + TOKEN_PATH, timeout=TIMEOUT)
    assert (empty.status_code, empty.content) == (200, b"")
    assert requests.post(aws_mock.url + f"{META}/instance-id", timeout=TIMEOUT).ok
    assert get(aws_mock, f"/2021-03-23{META[7:]}/instance-id").status_code == 404
    events = get(aws_mock, f"{META}/events/maintenance/scheduled").json()
    assert [e["EventId"] for e in events] == [MOCK_EVENT_ID]
    assert parse_event_time(events[0]["NotBefore"], "t") == started  # already past
    assert "NotBeforeDeadline" in events[0]


def test_aws_mock_spot_command_serves_spot_and_rebalance_only() -> None:
    with MetadataSimulator(quirks=Quirks.from_names(["aws-mock-spot"])) as sim:
        sim.set_lifecycle("Terminated")
        sim.set_notice("stop")
        sim.set_rebalance()
        url = sim.url + META
        assert (
            requests.get(f"{url}/events/maintenance/scheduled", timeout=TIMEOUT).status_code == 404
        )
        assert (
            requests.get(f"{url}/autoscaling/target-lifecycle-state", timeout=TIMEOUT).status_code
            == 404
        )
        assert requests.get(f"{url}/spot/instance-action", timeout=TIMEOUT).ok
        assert requests.get(f"{url}/events/recommendations/rebalance", timeout=TIMEOUT).ok


def test_wall_clock_tokens_expire_across_a_hibernation(sim_clock: FakeClock) -> None:
    path = f"{META}/instance-id"
    for quirks, after in ((Quirks(), 200), (Quirks(wall_clock_tokens=True), 401)):
        with MetadataSimulator(clock=sim_clock, quirks=quirks) as sim:
            tok = token(sim, "5")
            sim_clock.hibernate(60)  # the wall clock moves, the monotonic one does not
            assert get(sim, path, tok).status_code == after


def test_quirks_by_name_over_http_and_on_the_command_line(simulator: MetadataSimulator) -> None:
    assert Quirks.from_names(["aws-mock"]) == AWS_MOCK
    assert Quirks.from_names(["moving-times"]) == Quirks(moving_times=True)
    with pytest.raises(ValueError, match="unknown quirk"):
        Quirks.from_names(["sloppy"])
    assert control(simulator, "POST", "quirks", json={"names": ["no_hibernation_path"]}).ok
    assert get(simulator, f"{META}/hibernation/configured").status_code == 404
    assert control(simulator, "GET", "quirks").json()["no_hibernation_path"] is True
    assert control(simulator, "POST", "quirks", json={"names": ["nope"]}).status_code == 400
    assert control(simulator, "POST", "quirks", json={"names": []}).ok
    assert get(simulator, f"{META}/hibernation/configured").text == "true"


def test_module_entry_point_aws_mock_notice_and_fault() -> None:
    args = ["--port", "0", "--aws-mock", "--notice", "stop"]
    args += ["--fault", f"error_503,count=1,path={META}/instance-id"]
    command = [sys.executable, "-m", "spotguard.simulator", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            statuses = [
                requests.get(url + f"{META}/instance-id", timeout=TIMEOUT).status_code
                for _ in range(2)
            ]
            assert statuses == [503, 200]
            action = requests.get(url + f"{META}/spot/instance-action", timeout=TIMEOUT)
            assert action.json()["action"] == "stop"
            assert action.headers["Content-Type"] == "application/json"
        finally:
            process.terminate()
        assert process.wait(timeout=30) == 0
    bad = subprocess.run(
        [sys.executable, "-m", "spotguard.simulator", "--fault", "gremlins"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "unknown fault" in bad.stderr


# -- faults ---------------------------------------------------------------------------------


def test_hang_holds_until_stop() -> None:
    sim = MetadataSimulator(v1_allowed=True).start()  # hang: an hour unless stopped
    sim.set_fault("hang", path=f"{META}/spot/")
    with pytest.raises(requests.Timeout):
        requests.get(sim.url + f"{META}/spot/instance-action", timeout=0.3)
    assert requests.get(sim.url + f"{META}/instance-id", timeout=TIMEOUT).ok
    sim.set_fault("hang", 1)
    with pytest.raises(requests.Timeout):
        requests.put(sim.url + TOKEN_PATH, headers={TTL_HEADER: "60"}, timeout=0.3)
    sim.stop()  # returns although two requests are still held
    assert sim.count(status=0) == 2


def test_drip_trickles_the_honest_answer(simulator: MetadataSimulator) -> None:
    tok = token(simulator)
    simulator.set_notice("stop")
    honest = get(simulator, f"{META}/spot/instance-action", tok).content
    simulator.set_fault("drip", 1, delay=1.0)
    began = time.monotonic()
    with requests.get(
        simulator.url + f"{META}/spot/instance-action",
        headers={TOKEN_HEADER: tok},
        timeout=TIMEOUT,  # per read: every byte comes well within it
        stream=True,
    ) as answer:
        first = answer.raw.read(1)
        first_at = time.monotonic()
        rest = answer.raw.read()
    assert first + rest == honest
    assert time.monotonic() - first_at >= 0.8  # the rest came slowly, byte by byte
    assert time.monotonic() - began >= 0.9


@pytest.mark.parametrize("fault", ["huge", "huge_unsized"])
def test_huge_bodies(simulator: MetadataSimulator, fault: str) -> None:
    tok = token(simulator)
    simulator.set_fault(fault, 1)
    with requests.get(
        simulator.url + f"{META}/instance-id",
        headers={TOKEN_HEADER: tok},
        timeout=TIMEOUT,
        stream=True,
    ) as answer:
        head = answer.raw.read(1 << 20)
        if fault == "huge":
            assert answer.headers["Content-Length"] == str(HUGE_SIZE)
        else:
            assert "Content-Length" not in answer.headers
    assert head == b" " * (1 << 20)
    assert get(simulator, f"{META}/instance-id", tok).text == "i-0123456789abcdef0"


def test_nested_json_breaks_a_naive_parser(simulator: MetadataSimulator) -> None:
    simulator.set_fault("nested", 1)
    body = get(simulator, f"{META}/spot/instance-action").content
    assert len(body) <= 16384
    with pytest.raises(RecursionError):
        json.loads(body)


def test_bad_time_on_every_time_path(simulator: MetadataSimulator) -> None:
    tok = token(simulator)
    simulator.set_fault("bad_time", 4)
    assert get(simulator, f"{META}/spot/instance-action", tok).json()["time"] == BAD_TIME
    assert get(simulator, f"{META}/spot/termination-time", tok).text == BAD_TIME
    rebalance = get(simulator, f"{META}/events/recommendations/rebalance", tok).json()
    assert rebalance == {"noticeTime": BAD_TIME}
    events = get(simulator, f"{META}/events/maintenance/scheduled", tok).json()
    assert [e["NotBefore"] for e in events] == [BAD_EVENT_TIME]
    assert get(simulator, f"{META}/spot/instance-action", tok).status_code == 404  # used up
    odd = "2026-12-01T08:22:00+23:59"
    simulator.set_notice("terminate")
    simulator.set_fault("bad_time", 1, value=odd)
    action = get(simulator, f"{META}/spot/instance-action", tok).json()
    assert action == {"action": "terminate", "time": odd}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_token_answers(simulator: MetadataSimulator, kind: str) -> None:
    simulator.set_fault("bad_token", 1, value=BAD_TOKENS[kind])
    answer = requests.put(simulator.url + TOKEN_PATH, headers={TTL_HEADER: "60"}, timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.content == BAD_TOKENS[kind].encode()
    assert len(token(simulator)) >= 32  # the next PUT is honest


def test_bad_token_default_is_crlf(simulator: MetadataSimulator) -> None:
    simulator.set_fault("bad_token", 1)
    answer = requests.put(simulator.url + TOKEN_PATH, headers={TTL_HEADER: "60"}, timeout=TIMEOUT)
    assert b"\r\n" in answer.content


def test_never_accept_makes_connects_time_out(simulator: MetadataSimulator) -> None:
    url = simulator.url + f"{META}/instance-id"
    session = requests.Session()
    tok = token(simulator)
    assert session.get(url, headers={TOKEN_HEADER: tok}, timeout=TIMEOUT).ok  # kept alive
    with pytest.raises(ValueError, match="never_accept"):
        simulator.set_fault("never_accept", 1)
    simulator.set_fault("never_accept")
    with pytest.raises(requests.ConnectTimeout):
        requests.get(url, headers={TOKEN_HEADER: tok}, timeout=(0.3, 0.3))
    with pytest.raises(requests.ConnectionError):  # the kept-alive connection was cut
        session.get(url, headers={TOKEN_HEADER: tok}, timeout=(0.3, 0.3))
    simulator.clear_faults()
    assert _eventually_ok(url, tok)
    simulator.set_fault("never_accept", delay=0.5)
    assert _eventually_ok(url, tok)  # ends by itself


def _eventually_ok(url: str, tok: str) -> bool:
    for _ in range(40):
        try:
            return requests.get(url, headers={TOKEN_HEADER: tok}, timeout=(0.5, 2)).ok
        except requests.ConnectionError:
            continue
    return False


# -- instance profile ------------------------------------------------------------------------


def test_fake_instance_profile_credentials(simulator: MetadataSimulator) -> None:
    tok = token(simulator)
    role = get(simulator, f"{META}/iam/security-credentials/", tok).text
    assert role == SimulatedInstance().iam_role
    credentials = get(simulator, f"{META}/iam/security-credentials/{role}", tok).json()
    assert credentials["AccessKeyId"].startswith("ASIAFAKE")
    assert "fake" in credentials["SecretAccessKey"]
    assert "fake" in credentials["Token"]
    info = get(simulator, f"{META}/iam/info", tok).json()
    assert info["InstanceProfileArn"].endswith(f"instance-profile/{role}")
    with MetadataSimulator(instance=SimulatedInstance(iam_role="")) as bare:
        assert get(bare, f"{META}/iam/info").status_code == 404


def test_botocore_reads_the_fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_EC2_METADATA_DISABLED", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with MetadataSimulator() as sim:  # the real clock: botocore checks the expiry
        fetcher = InstanceMetadataFetcher(timeout=2, num_attempts=1, base_url=sim.url)
        credentials = fetcher.retrieve_iam_role_credentials()
    assert credentials["access_key"] == "ASIAFAKESIMULATOR000"
    assert credentials["role_name"] == SimulatedInstance().iam_role
