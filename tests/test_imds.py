"""ImdsClient against the simulator over real HTTP on loopback, through every fault."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from unittest.mock import ANY

import pytest

from spotguard.clock import FakeClock
from spotguard.config import Seconds
from spotguard.imds import (
    TOKEN_PATH,
    ImdsClient,
    ImdsDisabledError,
    ImdsError,
    ImdsMalformedError,
    ImdsTokenTimeoutError,
    ImdsUnavailableError,
    format_event_time,
    format_rfc3339,
    parse_event_time,
    parse_rfc3339,
)
from spotguard.simulator import MetadataSimulator
from tests.fixtures_imds import BACKOFF_MAX, fast_config

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
    assert simulator.count("PUT", TOKEN_PATH, status=0) == 2
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


def test_read_timeout_is_retried_then_gives_up(simulator: MetadataSimulator) -> None:
    client = client_for(simulator, attempts=2)
    client.get_text(INSTANCE_ID)
    simulator.set_fault("timeout", 1)
    assert client.get_text(INSTANCE_ID) == "i-0123456789abcdef0"
    simulator.set_fault("timeout")
    with pytest.raises(ImdsUnavailableError, match="timed out") as caught:
        client.get_text(INSTANCE_ID)
    assert not isinstance(caught.value, ImdsTokenTimeoutError)
    assert simulator.count("GET", INSTANCE_ID, status=0) == 3


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ImdsClient(
        fast_config(f"http://127.0.0.1:{port}", attempts=2), clock=FakeClock(), backoff_max=0.01
    )
    with pytest.raises(ImdsUnavailableError, match="PUT /latest/api/token"):
        client.get_text(INSTANCE_ID)


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
