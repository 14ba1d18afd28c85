"""Ray jobs over ``s3://`` (issue 16): a batch view whose FileSource is ``s3://`` and whose
offline store is ``s3://`` (the moto ``s3_server``), materialized on the two-node ``ray_cluster``,
equals the local engine; so does a point-in-time join on Ray reading that offline store and
those sources. The cluster's node processes were started without any ``AWS_*`` variable: the
tasks reach S3 only because the driver passes its variables (contextkit.compute.ray.runtime).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import contextkit
from contextkit.compute.offline import OfflineFeatures, resolve_refs
from contextkit.config import ComputeConfig
from tests.compute.test_ray_features import (
    DEFS,
    START,
    assert_same_rows,
    random_events,
    stored,
    write_repo,
)

pytestmark = pytest.mark.slow


def test_a_view_over_s3_with_an_s3_offline_store_equals_local(
    tmp_path, ray_cluster, s3_server, monkeypatch
):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.create_bucket()
    data = random_events(11, 800)
    source = f"s3://{bucket}/data/events.parquet"
    pq.write_table(data, f"{bucket}/data/events.parquet", filesystem=_fs())
    defs = DEFS.replace('path="data/events.parquet"', f'path="{source}"')
    compute = {"engine": "ray", "address": ray_cluster.address, "partitions": 3,
               "connect_timeout_s": 60, "time_chunk": "2d"}  # fmt: skip
    local = _open(write_repo(tmp_path / "local", defs, {}, None), None)
    remote = _open(write_repo(tmp_path / "ray", defs, {}, compute), f"s3://{bucket}/offline")
    assert remote.runtime.config.offline_location == f"s3://{bucket}/offline"
    end = START + timedelta(days=6, hours=12)
    for ctx in (local, remote):
        [job_a, job_b] = ctx.materialize(["spend", "latest"], end=end)
        assert job_a.status == job_b.status == "succeeded", (job_a, job_b)
    for view in ("spend", "latest"):
        want, got = stored(local, view, ["user_id"]), stored(remote, view, ["user_id"])
        assert want[0] and want[1]
        assert_same_rows(got[0], want[0], f"offline rows of {view}")
        assert_same_rows(got[1], want[1], f"online rows of {view}")

    # A point-in-time join on Ray: from the s3:// offline store, and from the s3:// source.
    rng = np.random.default_rng(5)
    events = pd.DataFrame(
        {
            "user_id": rng.integers(0, 30, 200),
            "ts": pd.Series(
                pd.Timestamp(START) + pd.to_timedelta(rng.integers(0, 6 * 86400, 200), unit="s"),
                dtype="datetime64[us, UTC]",
            ),
        }
    )
    ray_config = ComputeConfig(engine="ray", address=ray_cluster.address, partitions=3)
    for from_source in (False, True):
        want = OfflineFeatures(
            local.runtime, events, resolve_refs(local.runtime, ["spend", "latest"]), "ts",
            from_source,
        ).to_pandas()  # fmt: skip
        got = OfflineFeatures(
            remote.runtime, events, resolve_refs(remote.runtime, ["spend", "latest"]), "ts",
            from_source, compute=ray_config,
        ).to_pandas()  # fmt: skip
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)
    local.close()
    remote.close()


def _fs():
    from contextkit.stores.objectstore import S3Settings

    return S3Settings.from_env().filesystem()


def _open(root, offline: str | None):
    import yaml

    if offline is not None:
        path = root / "contextkit.yaml"
        config = yaml.safe_load(path.read_text())
        config["offline_store"] = offline
        path.write_text(yaml.safe_dump(config))
    ctx = contextkit.connect(root, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(root))
    return ctx
