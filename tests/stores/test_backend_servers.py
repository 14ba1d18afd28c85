"""The real-server fixtures of tests/backends.py: each server starts, answers and can be used."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.backends import _redis_pong


def test_redis_server_answers_and_restarts_empty_after_sigkill(redis_factory):
    import redis

    server = redis_factory()
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    client.set("k", "v")
    server.kill()
    assert not _redis_pong(server.port, None)
    server.restart()
    assert client.get("k") is None, "no persistence: a restarted server is empty"
    assert client.ping()


def test_redis_server_with_password_refuses_a_client_without_it(redis_server):
    import redis

    assert redis.Redis.from_url(redis_server.url).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=redis_server.port, password="wrong").ping()


def test_postgres_server_serves_a_fresh_database(postgres_server):
    url = postgres_server.create_database()
    done = subprocess.run(
        [str(postgres_server.bin / "psql"), url, "-tAc", "SELECT current_database()"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == url.rsplit("/", 1)[1]


def test_s3_server_stores_and_returns_an_object(s3_server):
    import boto3

    bucket = s3_server.create_bucket()
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name=s3_server.region,
    )
    body = uuid.uuid4().bytes
    s3.put_object(Bucket=bucket, Key="a/b.bin", Body=body)
    assert s3.get_object(Bucket=bucket, Key="a/b.bin")["Body"].read() == body
