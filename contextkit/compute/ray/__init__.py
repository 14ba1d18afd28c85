"""The distributed engine: batch compute on a Ray cluster, with results equal to the local engine's.

What runs on Ray, and why (docs/compute.md):

- ``features``: a batch feature view's materialization split into time chunks x entity-hash buckets,
  each running the local engine's DuckDB SQL over Arrow in a Ray task; the driver commits once,
  exactly as the local engine does, so a failed or cancelled job publishes nothing.
- ``embedding``: an embedding view's texts to encode go through Ray Data ``map_batches`` with an
  actor pool of encoders (the model loaded once per actor, a GPU per actor where there are any).
- ``offline``: point-in-time joins of many events, partitioned by entity hash, per partition in
  DuckDB, returned in the caller's event order.

Plans (what to compute), the SQL, and every commit stay on the driver: Ray only runs the heavy
stateless part. ``ray`` is an optional extra (``pip install 'contextkit[ray]'``): nothing here
imports it at module level; :func:`contextkit.compute.ray.runtime.connect` does, on first use.
"""
