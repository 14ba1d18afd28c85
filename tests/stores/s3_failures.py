"""Real S3 endpoints that fail, for the object-store error tests of the offline and vector stores.

- ``s3_auth_server``: a moto server that checks credentials (moto checks none by default). It is
  started with ``INITIAL_NO_AUTH_ACTION_COUNT=3``: the first three requests create an IAM user, its
  policy and its access key; every request after that is authenticated, so a wrong secret or an
  unknown key gets moto's real 403.
- ``silent_endpoint``: a TCP listener that accepts connections and never answers (a hung server).
- ``closed_endpoint()``: a loopback port nothing listens on (connection refused).
- ``private_s3_server``: a moto server of the test's own, to stop while a store uses it.

Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import READY_TIMEOUT_S, S3Server, free_port, missing_server


def closed_endpoint() -> str:
    """An http:// endpoint on a loopback port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def _moto_binary() -> str:
    beside = Path(sys.executable).parent / "moto_server"
    binary = str(beside) if beside.exists() else shutil.which("moto_server")
    if binary is None:
        missing_server('moto_server is not installed (pip install "moto[server]")')
    return binary  # type: ignore[return-value]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory) -> Iterator[S3Server]:
    """A moto S3 server that authenticates requests; ``access_key``/``secret_key`` are a real
    IAM key allowed everything, and ``create_bucket()`` works with them."""
    binary = _moto_binary()
    server = S3Server(binary, tmp_path_factory.mktemp("s3auth"))
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    with open(server.dir / "moto.log", "wb") as log:
        server.proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(server.port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        # A TCP connect, not an HTTP request: each request counts against the three.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _listening(server.port):
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server (with authentication) did not start")
            time.sleep(0.05)
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=server.endpoint,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name=server.region,
        )
        iam.create_user(UserName="contextkit")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="contextkit", PolicyName="all", PolicyDocument=json.dumps(policy)
        )
        key = iam.create_access_key(UserName="contextkit")["AccessKey"]
        server.access_key, server.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def silent_endpoint() -> Iterator[str]:
    """An http:// endpoint that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.fixture
def private_s3_server(tmp_path) -> Iterator[S3Server]:
    """A moto server of the test's own, which the test may stop (an endpoint that goes away)."""
    server = S3Server(_moto_binary(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
