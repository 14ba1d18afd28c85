"""Point-in-time-correct features for events: training and evaluation sets for notebooks.

``Context.get_features_for_events(events, "support_assistant")`` returns every event row exactly
once, in input order, with each feature's value as of the row's timestamp:

- attribute views: the latest feature row with feature time ``<=`` event time (an ``ASOF LEFT
  JOIN`` in DuckDB), null when that row is ``ttl`` or more older than the event;
- aggregate views: the windows ending at the event time (``t - w < ts <= t``), computed from the
  view's input rows, null when the entity has no input within ``ttl`` (default: largest window);
  exactly what the online path serves for a materialization ending at ``t``.

Timestamps: naive values are read as UTC, aware ones are converted to UTC; a column mixing both is
an error; finer than microseconds is floored (an event 1 ns before a row stays before it). Keys
match only an equal value of the view's key type (``1.0`` matches ``1``, ``1.5`` nothing). Event
columns named like a result column, or with the reserved prefix ``__ck_``, are refused. Data comes
from the offline store when it covers the events, else from the sources (``from_source=True``
forces that); ``.sources_used`` says which was used per view. Nothing runs until a ``to_*``
method is called.

Stream feature views are computed from their push source's events (the ingest log and the
source's ``batch_source``) with ``streaming.stream_offline_sql``: the same tile-aligned windows and
latest values the online path serves at the event's time. Realtime views run their function per
event row, in Arrow batches, over the request-context values (taken from the events' columns named
like the request fields) and their input views' point-in-time features (computed alongside, in the
same query, whether or not the result shows them).

Modules: ``events`` (reading and checking the events), ``sources`` (where each view is read
from), ``joins`` (the SQL per view kind), ``query`` (the whole query and the realtime columns,
shared with the Ray engine), ``features`` (``OfflineFeatures``). With ``compute: ray`` the same
query runs per entity-hash partition of the events in Ray tasks
(:mod:`contextkit.compute.ray.offline`, docs/compute.md).
"""

from contextkit.compute.offline.features import OfflineFeatures
from contextkit.compute.offline.sources import resolve_refs, select_features

__all__ = ["OfflineFeatures", "resolve_refs", "select_features"]
