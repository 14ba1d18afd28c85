"""S3 settings from the standard AWS variables, store locations, and how failures are named."""

from __future__ import annotations

import pytest

from contextkit.stores.errors import StoreFailure
from contextkit.stores.objectstore import S3Settings, S3Url, classify, open_location

ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "very-secret-key",
    "AWS_DEFAULT_REGION": "eu-west-3",
}


def test_settings_come_from_the_aws_variables():
    settings = S3Settings.from_env(ENV)

    assert (settings.endpoint, settings.region, settings.access_key) == (
        "http://127.0.0.1:9000",
        "eu-west-3",
        "AKIAEXAMPLE",
    )
    assert "very-secret-key" not in repr(settings)
    options = settings.lance_storage_options()
    assert options["endpoint"] == "http://127.0.0.1:9000" and options["allow_http"] == "true"
    assert options["aws_secret_access_key"] == "very-secret-key"
    assert options["region"] == "eu-west-3" and options["client_max_retries"] == "2"


def test_the_s3_endpoint_and_aws_region_take_precedence():
    env = dict(ENV, AWS_ENDPOINT_URL_S3="https://r2.example.com", AWS_REGION="auto")
    settings = S3Settings.from_env(env, request_timeout_s=3)
    assert (settings.endpoint, settings.region, settings.request_timeout_s) == (
        "https://r2.example.com",
        "auto",
        3,
    )
    assert "allow_http" not in settings.lance_storage_options()
    assert S3Settings.from_env({}).region == "us-east-1"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"AWS_MAX_ATTEMPTS": "many"}, "AWS_MAX_ATTEMPTS must be a positive integer"),
        ({"AWS_ENDPOINT_URL": "127.0.0.1:9000"}, "is not an http:// or https:// URL"),
    ],
)
def test_bad_variables_are_refused_with_a_hint(env, message):
    with pytest.raises(StoreFailure, match=message) as e:
        S3Settings.from_env(env)
    assert e.value.hint


def test_a_password_in_the_endpoint_is_masked_in_every_message():
    settings = S3Settings(endpoint="http://minio:pa55word@10.0.0.1:9000", secret_key="sk-12345")
    assert settings.endpoint_label == "http://minio:***@10.0.0.1:9000"
    assert settings.scrub("failed for sk-12345 with pa55word") == "failed for *** with ***"


@pytest.mark.parametrize(
    "url, message",
    [
        ("s3://Bad_Bucket/x", "not a valid bucket name"),
        ("s3://ab/x", "not a valid bucket name"),
        ("s3://bucket/a/../b", "may not contain"),
        ("gs://bucket/x", "neither a local folder nor s3://"),
    ],
)
def test_bad_locations_are_refused(url, message):
    with pytest.raises(StoreFailure, match=message):
        open_location(url, settings=S3Settings())


def test_a_location_names_its_bucket_and_prefix():
    url = S3Url.parse("s3://my-bucket//team/offline/")
    assert (url.bucket, url.prefix, url.path, url.url) == (
        "my-bucket",
        "team/offline",
        "my-bucket/team/offline",
        "s3://my-bucket/team/offline",
    )


@pytest.mark.parametrize(
    "text, kind",
    [
        ("AWS Error NO_SUCH_BUCKET during CreateMultipartUpload", "bucket"),
        ("AWS Error ACCESS_DENIED during HeadBucket operation", "credentials"),
        ('Generic { store: "S3", source: ... status: 403 ... InvalidAccessKeyId', "credentials"),
        ("AWS Error NETWORK_CONNECTION during HeadBucket operation: curlCode: 7", "unreachable"),
        ('store: "S3" ... HTTP error: error sending request', "unreachable"),
        ("AWS Error SLOW_DOWN during PutObject", "server"),
        ("Wrapped error: Not found: v/t.lance/data/x.lance", None),
        ("the encoder timed out", None),  # not the object store's
    ],
)
def test_failures_are_told_apart_by_cause(text, kind):
    assert classify(text) == kind
