"""Monitoring of materialized views, as users read it: freshness, alerts, and the status and
quality reports of every view (``ctx.monitoring``, ``contextkit status``, ``/v1/views``).

The numbers themselves are measured by each job before it commits (see
:mod:`contextkit.compute.quality`): statistics of the rows, drift against a reference job, and
the view's expectations. This package reads what jobs recorded:

* :mod:`.freshness`: how old the served data is, against ``max_staleness``, ``ttl`` and
  ``batch_schedule`` (``fresh``, ``late``, ``stale``, ``expired``, ``empty``, ``never``,
  ``request_time``);
* :mod:`.alerts`: stored alerts (failed expectations, failed push-based encodes) and live ones
  (failed jobs, stale/expired/empty/late views, online tables that shrank);
* :mod:`.status`: :class:`Monitoring`, one :class:`ViewStatus` per view, quality reports.
"""

from contextkit.governance.monitoring.alerts import Alert, summarize_alerts
from contextkit.governance.monitoring.freshness import FRESHNESS_STATES, Freshness, freshness
from contextkit.governance.monitoring.status import Monitoring, ViewStatus, job_dict, stats_json

__all__ = [
    "FRESHNESS_STATES",
    "Alert",
    "Freshness",
    "Monitoring",
    "ViewStatus",
    "freshness",
    "job_dict",
    "stats_json",
    "summarize_alerts",
]
