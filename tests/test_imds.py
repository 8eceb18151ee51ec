"""ImdsClient against the simulator over real HTTP on loopback, through every fault."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from unittest.mock import ANY

import pytest
from structlog.testing import capture_logs

from spotguard.clock import FakeClock
from spotguard.config import Seconds
from spotguard.imds import (
    TOKEN_PATH,
    ImdsClient,
    ImdsDisabledError,
    ImdsError,
    ImdsMalformedError,
    ImdsServerError,
    ImdsTokenTimeoutError,
    ImdsUnavailableError,
    format_event_time,
    format_rfc3339,
    json_depth_ok,
    parse_event_time,
    parse_rfc3339,
)
from spotguard.simulator import (
    BAD_EVENT_TIME,
    BAD_TIME,
    BAD_TOKENS,
    MetadataSimulator,
)
from tests.fixtures_imds import BACKOFF_MAX, READ_TIMEOUT, fast_config

INSTANCE_ID = "/latest/meta-data/instance-id"
ACTION = "/latest/meta-data/spot/instance-action"


def client_for(
    sim: MetadataSimulator, clock: FakeClock | None = None, **config: object
) -> ImdsClient:
    return ImdsClient(
        fast_config(sim.url, **config), clock=clock or FakeClock(), backoff_max=BACKOFF_MAX
    )


def test_token_is_fetched_once_and_reused(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    for _ in range(5):
        assert imds_client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
    assert simulator.count("PUT", TOKEN_PATH) == 1
    assert simulator.count("GET", INSTANCE_ID, 200) == 5


def test_token_is_refreshed_before_it_expires(
    simulator: MetadataSimulator, sim_clock: FakeClock
) -> None:
    client = client_for(simulator, sim_clock, token_ttl=Seconds(600))
    client.get_text(INSTANCE_ID)
    sim_clock.advance(500)  # well inside the lifetime: keep it
    client.get_text(INSTANCE_ID)
    assert simulator.count("PUT", TOKEN_PATH) == 1
    sim_clock.advance(80)  # 20 s before expiry: within the refresh margin
    assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
    assert simulator.count("PUT", TOKEN_PATH) == 2
    assert simulator.count(status=401) == 0


def test_expired_token_gets_one_new_token_and_retry(
    simulator: MetadataSimulator, sim_clock: FakeClock
) -> None:
    # The client's clock stands still, as the monotonic clock does across a hibernation.
    client = client_for(simulator, FakeClock(), token_ttl=Seconds(60))
    client.get_text(INSTANCE_ID)
    sim_clock.advance(61)
    assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
    assert simulator.count("GET", INSTANCE_ID, 401) == 1
    assert simulator.count("PUT", TOKEN_PATH) == 2


def test_disabled_service_raises_disabled_on_put_and_get(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    simulator.set_fault("disabled", 1)
    with pytest.raises(ImdsDisabledError, match="disabled"):
        imds_client.get_text(INSTANCE_ID)
    assert simulator.count("PUT", TOKEN_PATH, 403) == 1
    imds_client.get_text(INSTANCE_ID)  # token now cached
    simulator.set_fault("disabled")
    with pytest.raises(ImdsDisabledError):
        imds_client.get_text(INSTANCE_ID)
    assert simulator.count("GET", INSTANCE_ID, 403) == 1  # not retried


def test_not_found_is_none_not_an_error(imds_client: ImdsClient) -> None:
    assert imds_client.get_text(ACTION) is None
    assert imds_client.get_json(ACTION) is None
    assert imds_client.get_bytes("/latest/user-data") is None


def test_token_put_timeout_names_the_hop_limit(simulator: MetadataSimulator) -> None:
    simulator.set_fault("token_timeout")
    client = client_for(simulator, attempts=2)
    with pytest.raises(ImdsTokenTimeoutError, match=r"hop limit\?") as caught:
        client.get_text(INSTANCE_ID)
    assert isinstance(caught.value, ImdsUnavailableError)
    assert simulator.count("PUT", TOKEN_PATH, status=0) == 1  # one deadline, no retry
    assert simulator.count("GET") == 0


@pytest.mark.parametrize("fault", ["error_500", "error_503"])
def test_server_errors_back_off_then_succeed(simulator: MetadataSimulator, fault: str) -> None:
    clock = FakeClock()
    client = client_for(simulator, clock, attempts=3)
    client.get_text(INSTANCE_ID)
    simulator.set_fault(fault, 2)
    before = clock.monotonic()
    assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
    assert simulator.count("GET", INSTANCE_ID, int(fault[-3:])) == 2
    assert 0 < clock.monotonic() - before <= 2 * BACKOFF_MAX  # slept between, on our clock


def test_server_errors_on_the_token_put_are_retried(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    simulator.set_fault("error_503", 1)
    assert imds_client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
    assert simulator.count("PUT", TOKEN_PATH, 503) == 1
    assert simulator.count("PUT", TOKEN_PATH, 200) == 1


def test_server_errors_exhaust_attempts(simulator: MetadataSimulator) -> None:
    client = client_for(simulator, attempts=3)
    client.get_text(INSTANCE_ID)
    simulator.set_fault("error_503")
    with pytest.raises(ImdsUnavailableError, match="503"):
        client.get_text(INSTANCE_ID)
    assert simulator.count("GET", INSTANCE_ID, 503) == 3


def test_read_timeout_ends_the_call_without_retry(simulator: MetadataSimulator) -> None:
    client = client_for(simulator, attempts=3)
    client.get_text(INSTANCE_ID)
    simulator.set_fault("timeout", 1)
    with pytest.raises(ImdsUnavailableError, match="timed out") as caught:
        client.get_text(INSTANCE_ID)
    assert not isinstance(caught.value, ImdsTokenTimeoutError)
    assert simulator.count("GET", INSTANCE_ID, status=0) == 1
    assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"  # the next poll is the retry


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ImdsClient(
        fast_config(f"http://127.0.0.1:{port}", attempts=2), clock=FakeClock(), backoff_max=0.01
    )
    with capture_logs() as logs, pytest.raises(ImdsUnavailableError, match="PUT /latest/api/token"):
        client.get_text(INSTANCE_ID)
    assert logs == []  # one failed attempt, reported once by the caller


def test_garbage_is_malformed_json_but_text_still_reads(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    simulator.set_notice("stop")
    imds_client.get_text(INSTANCE_ID)
    simulator.set_fault("garbage", 2)
    with pytest.raises(ImdsMalformedError, match="spot/instance-action: not JSON"):
        imds_client.get_json(ACTION)
    assert "not-json" in (imds_client.get_text(ACTION) or "")
    assert imds_client.get_json(ACTION) == {"action": "stop", "time": ANY}


def test_slow_answer_within_the_timeout_is_fine(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    simulator.set_fault("slow", 2, delay=0.1)  # the token PUT and the GET
    assert imds_client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
    assert simulator.count(status=0) == 0
    assert simulator.count(status=200) == 2


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def simulator6() -> Iterator[MetadataSimulator]:
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    with MetadataSimulator(address="::1") as sim:
        yield sim


def test_ipv6_endpoint(simulator6: MetadataSimulator) -> None:
    assert simulator6.url.startswith("http://[::1]:")
    client = client_for(simulator6)
    assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
    document = client.get_json("/latest/dynamic/instance-identity/document")
    assert document is not None
    assert document["region"] == "us-east-1"


@pytest.mark.parametrize("path", ["latest/meta-data/instance-id", INSTANCE_ID])
def test_url_join_tolerates_slashes(simulator: MetadataSimulator, path: str) -> None:
    client = ImdsClient(fast_config(simulator.url + "/"), clock=FakeClock())
    assert client.get_text(path) == "i-0123456789abcdef0"


def test_the_urls_own_path_comes_before_every_request_path(simulator: MetadataSimulator) -> None:
    client = ImdsClient(fast_config(simulator.url + "/base/"), clock=FakeClock())
    with pytest.raises(ImdsError, match="no IMDSv2 here"):  # the simulator has no /base/...
        client.get_text(INSTANCE_ID)
    assert simulator.count("PUT", "/base" + TOKEN_PATH) == 1
    assert simulator.count() == 1


def test_proxy_environment_is_ignored(
    simulator: MetadataSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens on discard
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    assert client_for(simulator).get_text(INSTANCE_ID) == "i-0123456789abcdef0"


def test_service_without_tokens_needs_allow_v1() -> None:
    with MetadataSimulator(v2=False) as sim:
        with pytest.raises(ImdsError, match="allow_v1"):
            client_for(sim).get_text(INSTANCE_ID)
        client = client_for(sim, allow_v1=True)
        assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
        assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
        assert sim.count("PUT", TOKEN_PATH) == 2  # one per client, then tokenless GETs
        assert sim.count("GET", INSTANCE_ID, 200) == 2


def test_allow_v1_still_prefers_tokens(simulator: MetadataSimulator) -> None:
    client = client_for(simulator, allow_v1=True)
    assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
    assert simulator.count("PUT", TOKEN_PATH, 200) == 1
    assert simulator.count(status=401) == 0


def test_hop_limited_put_falls_back_to_v1_then_back_to_tokens() -> None:
    with MetadataSimulator(v1_allowed=True) as sim:
        sim.set_fault("token_timeout", 1)
        client = client_for(sim, allow_v1=True)
        assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
        assert sim.count("PUT", TOKEN_PATH, 0) == 1
        sim.v1_allowed = False  # the service now insists on tokens: 401, then a token
        assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
        assert sim.count("GET", INSTANCE_ID, 401) == 1
        assert sim.count("PUT", TOKEN_PATH, 200) == 1


def test_directory_listing_crawl(imds_client: ImdsClient) -> None:
    """Walk the tree the way cloud-init's Ec2 datasource does: listings, then leaves."""

    def crawl(path: str) -> dict[str, object]:
        found: dict[str, object] = {}
        for entry in (imds_client.get_text(path) or "").splitlines():
            if entry.endswith("/"):
                found[entry.rstrip("/")] = crawl(path + entry)
            else:
                found[entry] = imds_client.get_text(path + entry)
        return found

    tree = crawl("/latest/meta-data/")
    assert tree["instance-id"] == "i-0123456789abcdef0"
    assert tree["placement"] == {"availability-zone": "us-east-1a", "region": "us-east-1"}
    assert tree["hibernation"] == {"configured": "true"}
    macs = tree["network"]["interfaces"]["macs"]  # type: ignore[index]
    assert macs[tree["mac"]]["local-ipv4s"] == tree["local-ipv4"]
    assert imds_client.get_text("/2009-04-04/meta-data/instance-id") == tree["instance-id"]
    assert "2009-04-04" in (imds_client.get_text("/") or "").splitlines()


def test_time_formats_round_trip() -> None:
    epoch = 1_800_000_000.0
    assert format_rfc3339(epoch) == "2027-01-15T08:00:00Z"
    assert parse_rfc3339("2027-01-15T08:00:00Z", "p") == epoch
    assert format_event_time(epoch) == "15 Jan 2027 08:00:00 GMT"
    assert parse_event_time("15 Jan 2027 08:00:00 GMT", "p") == epoch
    assert parse_event_time(format_event_time(epoch - 14 * 86400), "p") == epoch - 14 * 86400
    with pytest.raises(ImdsMalformedError, match="p: bad time"):
        parse_rfc3339("soon", "p")
    with pytest.raises(ImdsMalformedError):
        parse_event_time("2027-01-15", "p")


# -- every request ends within its deadline, whatever the listener does ---------------------

SLACK = 3.0  # generous: a loaded CI machine; the point is "bounded", not "fast"


def notice(client: ImdsClient) -> dict[str, str]:
    body = client.get_json(ACTION, dict)
    assert isinstance(body, dict)
    return body


def timed_failure(client: ImdsClient, path: str, error: type[Exception], match: str) -> float:
    began = time.monotonic()
    with pytest.raises(error, match=match):
        client.get_bytes(path)
    return time.monotonic() - began


@pytest.mark.parametrize("path", [INSTANCE_ID, TOKEN_PATH])
def test_hang_costs_one_deadline(simulator: MetadataSimulator, path: str) -> None:
    client = client_for(simulator, attempts=5)
    simulator.set_fault("hang", path=path)
    error = ImdsTokenTimeoutError if path == TOKEN_PATH else ImdsUnavailableError
    took = timed_failure(
        client, INSTANCE_ID, error, "hop limit" if path == TOKEN_PATH else "timed out"
    )
    assert took < client.deadline + SLACK
    assert simulator.count(status=0) == 1


def test_never_accepting_listener_costs_one_connect(simulator: MetadataSimulator) -> None:
    client = client_for(simulator, attempts=5)
    assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"  # a kept-alive connection
    simulator.set_fault("never_accept")
    took = timed_failure(client, INSTANCE_ID, ImdsUnavailableError, "connect timed out")
    assert took < client.deadline + SLACK
    simulator.clear_faults()
    assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"


@pytest.mark.parametrize("path", [ACTION, TOKEN_PATH])
def test_slow_drip_is_cut_at_the_deadline(simulator: MetadataSimulator, path: str) -> None:
    simulator.set_notice("stop")
    client = client_for(simulator)
    simulator.set_fault("drip", 1, delay=60.0, path=path)  # each byte well within read_timeout
    took = timed_failure(client, ACTION, ImdsUnavailableError, "not complete within")
    assert took < client.deadline + SLACK
    assert notice(client)["action"] == "stop"  # no half-read connection reused


@pytest.mark.parametrize("path", [ACTION, TOKEN_PATH])
def test_dripped_headers_are_cut_at_the_deadline(simulator: MetadataSimulator, path: str) -> None:
    """Each byte of the status line and headers well within read_timeout: only a total
    deadline on every receive ends the request in time."""
    simulator.set_notice("stop")
    client = client_for(simulator)
    simulator.set_fault("drip_head", 1, delay=60.0, path=path)
    error = ImdsTokenTimeoutError if path == TOKEN_PATH else ImdsUnavailableError
    took = timed_failure(client, ACTION, error, "hop limit" if path == TOKEN_PATH else "timed out")
    assert took < client.deadline + SLACK
    assert notice(client)["action"] == "stop"


def test_deadline_is_total_not_per_read(simulator: MetadataSimulator) -> None:
    """A drip whose every byte beats read_timeout would pass requests' own timeout."""
    simulator.set_notice("stop")
    client = client_for(simulator, read_timeout=Seconds(5.0))
    client = ImdsClient(client._config, clock=FakeClock(), deadline=0.5)
    simulator.set_fault("drip", 1, delay=30.0, path=ACTION)
    assert timed_failure(client, ACTION, ImdsUnavailableError, "0.5 s deadline") < 0.5 + SLACK


@pytest.mark.parametrize("fault", ["huge", "huge_unsized"])
def test_huge_bodies_are_refused_unread(
    simulator: MetadataSimulator, imds_client: ImdsClient, fault: str
) -> None:
    simulator.set_notice("stop")
    simulator.set_fault(fault, 1, path=ACTION)
    took = timed_failure(imds_client, ACTION, ImdsMalformedError, "byte cap")
    assert took < imds_client.deadline + SLACK
    assert notice(imds_client)["action"] == "stop"


def test_huge_token_answer_is_discarded(simulator: MetadataSimulator) -> None:
    simulator.set_fault("huge", 2, path=TOKEN_PATH)
    client = client_for(simulator)
    with pytest.raises(ImdsMalformedError, match="byte cap"):
        client.get_text(INSTANCE_ID)
    assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"


def test_deeply_nested_json_is_malformed_not_a_recursion_error(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    simulator.set_fault("nested", 1)
    with pytest.raises(ImdsMalformedError, match="nested deeper"):
        imds_client.get_json(ACTION)
    assert json_depth_ok(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')  # in a string
    assert json_depth_ok(b'{"a": "\\"[[["}', limit=1)
    assert not json_depth_ok(b"[" * 17)


def test_json_of_the_wrong_type_is_malformed(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    with pytest.raises(ImdsMalformedError, match="expected a JSON object, got list"):
        imds_client.get_json("/latest/meta-data/events/maintenance/scheduled", dict)
    assert imds_client.get_json("/latest/meta-data/events/maintenance/scheduled", list) == []


def test_server_error_retries_stay_within_a_deadline(simulator: MetadataSimulator) -> None:
    client = ImdsClient(
        fast_config(simulator.url, attempts=10), backoff_max=0.4, deadline=0.5
    )  # the real clock: backoff sleeps are real
    client.get_text(INSTANCE_ID)
    simulator.set_fault("throttled")
    took = timed_failure(client, INSTANCE_ID, ImdsServerError, "HTTP 429")
    assert took < 2 * 0.5 + SLACK
    assert 1 <= simulator.count("GET", INSTANCE_ID, 429) < 10


# -- validated shapes -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_token_is_discarded_and_fetched_again(
    simulator: MetadataSimulator, imds_client: ImdsClient, kind: str
) -> None:
    simulator.set_fault("bad_token", 1, value=BAD_TOKENS[kind])
    with capture_logs() as logs:
        assert imds_client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
    assert simulator.count("PUT", TOKEN_PATH, 200) == 2
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["imds.token.malformed"]


def test_persistently_bad_token_is_a_clear_error_then_recovers(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    simulator.set_fault("bad_token", 2)  # CR/LF inside
    with pytest.raises(ImdsMalformedError, match="token discarded"):
        imds_client.get_text(INSTANCE_ID)
    simulator.set_notice("stop")
    assert notice(imds_client)["action"] == "stop"  # a notice is not missed


@pytest.mark.parametrize(
    "text",
    [
        BAD_TIME,
        "0001-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "2100-01-01T00:00:00Z",
        "2026-12-01T08:22:00+23:59",
        "2026-12-01T08:22:00+05:30:15",
        "2026-12-01T08:22:00-14:01",
    ],
)
def test_out_of_range_and_odd_offset_times_are_malformed(text: str) -> None:
    with pytest.raises(ImdsMalformedError, match="p: "):
        parse_rfc3339(text, "p")


def test_sane_offsets_and_event_time_range() -> None:
    assert parse_rfc3339("2027-01-15T09:00:00+01:00", "p") == 1_800_000_000.0
    assert parse_rfc3339("2027-01-14T20:00:00-12:00", "p") == 1_800_000_000.0
    with pytest.raises(ImdsMalformedError, match="out of range"):
        parse_event_time(BAD_EVENT_TIME, "p")
    with pytest.raises(ImdsMalformedError, match="out of range"):
        parse_event_time("1 Jan 1999 00:00:00 GMT", "p")


def test_bad_time_fault_reaches_the_parser(
    simulator: MetadataSimulator, imds_client: ImdsClient
) -> None:
    simulator.set_fault("bad_time", 1)
    body = notice(imds_client)
    with pytest.raises(ImdsMalformedError, match="out of range"):
        parse_rfc3339(body["time"], ACTION)


# -- peers -----------------------------------------------------------------------------------


def test_aws_mock_defaults_read_cleanly(aws_mock: MetadataSimulator, sim_clock: FakeClock) -> None:
    aws_mock.set_notice("stop")
    client = client_for(aws_mock)
    first = notice(client)
    sim_clock.advance(1)
    assert notice(client)["time"] != first["time"]  # the mock moves it
    assert client.get_text("/latest/meta-data/hibernation/configured") is None
    events = client.get_json("/latest/meta-data/events/maintenance/scheduled", list)
    assert events is not None
    assert parse_event_time(events[0]["NotBefore"], "p") < sim_clock.wall()


def test_default_deadline_is_the_larger_timeout(simulator: MetadataSimulator) -> None:
    assert client_for(simulator).deadline == READ_TIMEOUT


def test_a_connection_the_service_closed_while_idle_is_replaced() -> None:
    """Services end kept-alive connections on their side (idle timeouts, restarts) without
    saying so in the answer: the next request must not be sent into the closed one."""
    closed = threading.Event()
    accepted: list[str] = []

    def serve(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the test closed the listener
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                accepted.append(request.split(b" ", 2)[1].decode())
                body = b"tok" if request.startswith(b"PUT") else b"i-0123456789abcdef0"
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            closed.set()  # keep-alive was implied, yet the connection is gone

    with socket.create_server(("127.0.0.1", 0)) as listener:
        threading.Thread(target=serve, args=(listener,), daemon=True).start()
        client = ImdsClient(fast_config(f"http://127.0.0.1:{listener.getsockname()[1]}"))
        for _ in range(2):
            closed.clear()
            assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
            assert closed.wait(5)
            time.sleep(0.05)  # the FIN is in
    assert accepted == [TOKEN_PATH, INSTANCE_ID, INSTANCE_ID]
