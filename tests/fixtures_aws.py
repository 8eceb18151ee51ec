"""A real moto server on 127.0.0.1: the only EC2 endpoint any test talks to."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# moto reads where its request recorder writes once, when imported: keep that out of the tree.
os.environ.setdefault(
    "MOTO_RECORDER_FILEPATH", os.path.join(tempfile.gettempdir(), f"spotguard-moto-{os.getpid()}")
)

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer
from mypy_boto3_ec2 import EC2Client


@dataclass(frozen=True)
class MotoServer:
    url: str

    def reset(self) -> None:
        requests.post(f"{self.url}/moto-api/reset", timeout=5).raise_for_status()

    def ec2(self, region: str = "us-east-1") -> EC2Client:
        return boto3.client(
            "ec2",
            region_name=region,
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's fake credentials
        )

    def start_recording(self) -> None:
        requests.post(f"{self.url}/moto-api/recorder/reset-recording", timeout=5)
        requests.post(f"{self.url}/moto-api/recorder/start-recording", timeout=5)

    def recorded(self) -> str:
        """The raw recording (one JSON object per request) since `start_recording`."""
        answer = requests.get(f"{self.url}/moto-api/recorder/download-recording", timeout=5)
        answer.raise_for_status()
        return answer.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_server_session() -> Iterator[MotoServer]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoServer(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        Path(os.environ["MOTO_RECORDER_FILEPATH"]).unlink(missing_ok=True)


@pytest.fixture
def moto_server(moto_server_session: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """A clean moto server per test, with fake credentials and no way to reach real AWS."""
    moto_server_session.reset()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_EC2": moto_server_session.url,
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    return moto_server_session
