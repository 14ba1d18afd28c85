"""One job's quality checks: measure the rows, compare with the reference, check the view's
expectations, and record all of it with the job.

Which rows a job measures (the *scope*): a feature view's job, its online snapshot, the latest
value per entity as of the job's end (``"online"``); a job that writes no online values (an
offline-only view, a backfill of a past range) measures the offline rows of its range instead
(``"offline"``); an embedding view's job, its documents, one row per key with the text and
metadata columns (``"documents"``), plus the vectors of the table after the write.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from contextkit.compute.quality.drift import reference_stats, same_as
from contextkit.compute.quality.statistics import (
    STATS_VERSION,
    TEMP,
    TEMP_DOCUMENTS,
    literal,
    measure,
    measure_vectors,
)
from contextkit.errors import ContextKitError, ExpectationFailedError, MonitoringError
from contextkit.framework.expectations import Outcome, evaluate
from contextkit.framework.specs import (
    EmbeddingViewSpec,
    FeatureViewSpec,
)
from contextkit.stores.registry import (
    AlertRecord,
    JobStatsRecord,
    RegistryStore,
)
from contextkit.types import String

if TYPE_CHECKING:
    import duckdb


# -- one job's monitoring --------------------------------------------------------------------------
class JobMonitor:
    """Measures one materialization job's rows, checks the view's expectations, and records both.

    ``check(...)`` runs before the job commits; when an expectation fails and the view says
    ``on_expectation_failure="fail"``, it records the numbers and the alerts and raises
    :class:`ExpectationFailedError`, so the job's except-path leaves the stores as they were.
    ``finish()`` runs after the commit: it records, and returns the job's status.
    """

    def __init__(
        self,
        registry: RegistryStore,
        workspace: str,
        view: FeatureViewSpec | EmbeddingViewSpec,
        job_id: str,
        *,
        as_of: datetime,
        complete: bool,
    ) -> None:
        self.registry = registry
        self.workspace = workspace
        self.view = view
        self.job_id = job_id
        self.as_of = as_of
        self.complete = complete
        self.expectations = view.expectations
        self.stats: dict[str, Any] | None = None
        self.scope: str | None = None
        self.outcomes: list[Outcome] = []
        self._reference: dict[str, Any] | None = None

    @classmethod
    def start(
        cls,
        registry: RegistryStore,
        workspace: str,
        view: FeatureViewSpec | EmbeddingViewSpec,
        job_id: str,
        *,
        as_of: datetime,
        enabled: bool = True,
    ) -> JobMonitor | None:
        """A monitor for the job, or None when monitoring is off and the view expects nothing."""
        if not enabled and view.expectations is None:
            return None
        return cls(registry, workspace, view, job_id, as_of=as_of, complete=enabled)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def check(self, con: duckdb.DuckDBPyConnection, query: str, *, scope: str) -> str:
        """Keep ``query``'s rows in a temporary table, measure and check them; returns the query
        that reads them back (so they are computed once)."""
        began = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TEMP TABLE {TEMP} AS {query}").fetchall()
        self._measure(con, TEMP, scope, began=began)
        return f"SELECT * FROM {TEMP}"

    def check_staged(self, con: duckdb.DuckDBPyConnection, write: Any) -> None:
        """Measure and check the rows of a staged offline write (a ``StagedWrite``): the job's
        own rows (``new_rows()``, not those kept from before), local or staged for S3."""
        rows = write.new_rows()
        if rows is None:
            self._measure(con, None, "offline")
            return
        con.register("__staged_new_rows", rows)
        try:
            self._measure(con, "__staged_new_rows", "offline")
        finally:
            con.unregister("__staged_new_rows")

    def check_files(self, con: duckdb.DuckDBPyConnection, files: Sequence[str]) -> None:
        """Measure and check the offline rows in Parquet ``files``."""
        listed = ", ".join(literal(str(f)) for f in files)
        relation = f"(SELECT * FROM read_parquet([{listed}], hive_partitioning = false))"
        self._measure(con, relation if files else None, "offline")

    def watch_documents(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Pass an embedding view's document batches (Arrow) through, keeping what
        :meth:`check_documents` measures: each text's length and the metadata columns."""
        import pyarrow as pa
        import pyarrow.compute as pc

        assert isinstance(self.view, EmbeddingViewSpec)
        text, metadata = self.view.text_column, self.view.metadata
        self._documents: list[Any] = []
        for batch in batches:
            lengths = pc.utf8_length(batch.column(text))
            kept = [lengths, *(batch.column(m) for m in metadata)]
            self._documents.append(pa.RecordBatch.from_arrays(kept, names=[text, *metadata]))
            yield batch

    def check_documents(self, con: duckdb.DuckDBPyConnection, plan: Any) -> None:
        """Measure and check an embedding view's documents, read by :meth:`watch_documents`,
        before anything is encoded or written. ``plan`` is the encode plan's statistics: when it
        changes nothing, the previous job's numbers are reused (they are the same documents)."""
        import pyarrow as pa

        began = time.perf_counter()
        previous = reference_stats(
            self.registry, self.workspace, self.view.name, "documents", exclude=self.job_id
        )
        unchanged = not (plan.new or plan.changed or plan.refreshed or plan.deleted)
        if (
            unchanged
            and previous is not None
            and not previous.get("pinned")
            and previous.get("rows") == plan.documents
            and previous.get("complete") == self.complete
        ):
            self._measure(con, None, "documents", began=began, reuse=previous)
            return
        batches = getattr(self, "_documents", [])
        if not batches:
            self._measure(con, None, "documents", began=began)
            return
        con.register(TEMP_DOCUMENTS, pa.Table.from_batches(batches))
        self._measure(con, TEMP_DOCUMENTS, "documents", began=began)

    def add_vectors(self, sample: Callable[[], Any], *, table_version: int | None = None) -> None:
        """Measure the vectors of an embedding view's table: ``sample()`` reads some of them.

        When the table is at the version the reference job measured (nothing changed), its
        numbers are reused instead of reading the vectors again."""
        if self.stats is None or not self.complete:
            return
        assert isinstance(self.view, EmbeddingViewSpec)
        previous = (self._reference or {}).get("vectors")
        if (
            previous
            and table_version is not None
            and previous.get("table_version") == (table_version)
        ):
            reused = {k: v for k, v in previous.items() if k != "drift"}
            if "centroid" in reused:
                reused["drift"] = {
                    "centroid_shift": 0.0,
                    "reference_job": self._reference["job_id"],  # type: ignore[index]
                }
            self.stats["vectors"] = reused
        else:
            self.stats["vectors"] = measure_vectors(sample(), self.view.dimension, self._reference)
        self.stats["vectors"]["table_version"] = table_version
        shift = self.stats["vectors"].get("drift", {}).get("centroid_shift")
        if shift is not None:
            self.stats.setdefault("drift", {})["centroid_shift"] = shift

    def _columns(self) -> tuple[list, str | None, list[str]]:
        view = self.view
        if isinstance(view, EmbeddingViewSpec):
            dtypes = {m.name: m.dtype for m in view.metadata_schema}
            columns = [(view.text_column, String)] + [(m, dtypes.get(m)) for m in view.metadata]
            return columns, None, [view.text_column]
        columns = [(f.name, f.dtype) for f in view.features]
        return columns, "event_timestamp", []

    def _measure(
        self,
        con,
        relation: str | None,
        scope: str,
        *,
        began: float | None = None,
        reuse: dict[str, Any] | None = None,
    ) -> None:
        """Measure ``relation`` (None: no rows at all) and check the expectations.

        ``reuse``: the statistics of the previous job, when the rows are known to be the same
        (their drift is then zero). ``computed_ms`` in the statistics is the time since
        ``began`` (default: now): what monitoring added to the job, copying the rows included."""
        began = time.perf_counter() if began is None else began
        self.scope = scope
        self._reference = reference_stats(
            self.registry, self.workspace, self.view.name, scope, exclude=self.job_id
        )
        columns, event_column, text_columns = self._columns()
        if not self.complete:
            wanted = set(self.expectations.not_null) | set(self.expectations.between)
            columns = [c for c in columns if c[0] in wanted]
        if reuse is not None:
            self.stats = same_as(reuse)
        elif relation is None:
            self.stats = {"version": STATS_VERSION, "rows": 0, "complete": self.complete,
                          "columns": {}}  # fmt: skip
        else:
            try:
                self.stats = measure(
                    con,
                    relation,
                    columns,
                    event_column=event_column,
                    text_columns=text_columns,
                    between=self.expectations.between if self.expectations else None,
                    reference=self._reference if self.complete else None,
                    complete=self.complete,
                )
            except ContextKitError:
                raise
            except Exception as exc:
                raise MonitoringError(
                    f"computing the quality statistics of {self.view.name!r} failed: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                    hint="materialize without them (`monitoring: {enabled: false}` in "
                    "contextkit.yaml) and report this bug",
                ) from exc
        self.stats["scope"] = scope
        if self._reference is not None:
            drift = self.stats.setdefault("drift", {})
            drift["reference_job"] = self._reference["job_id"]
            drift["reference"] = "pinned" if self._reference.get("pinned") else "previous"
        as_of_us = int(self.as_of.timestamp() * 1e6)
        expectations = self.expectations
        if expectations is not None and isinstance(self.view, EmbeddingViewSpec):
            # An embedding view's staleness is the time since its last job: checked live.
            expectations = expectations.model_copy(update={"max_staleness_seconds": None})
        self.outcomes = evaluate(expectations, self.stats, as_of_us=as_of_us)
        self.stats["expectations"] = [o.to_dict() for o in self.outcomes]
        self.stats["computed_ms"] = round((time.perf_counter() - began) * 1000, 2)
        if self.failed and self.expectations is not None and self.expectations.on_failure == "fail":
            self._record("error")
            raise ExpectationFailedError(
                f"view {self.view.name!r} failed {len(self.failed)} expectation(s): "
                + "; ".join(o.message for o in self.failed),
                hint="the stores were left as they were; fix the data (or the expectation) and "
                "run `contextkit materialize` again; `contextkit quality "
                f"{self.view.name}` shows the numbers",
                details={"expectations": [o.to_dict() for o in self.failed]},
            )

    def finish(self) -> tuple[str, str | None]:
        """Record the job's numbers and alerts; ``(status, warning)`` for the job record."""
        if self.stats is None:
            return "succeeded", None
        self._record("warning")
        if self.failed:
            return "warning", "expectation failed: " + "; ".join(o.message for o in self.failed)
        return "succeeded", None

    def _record(self, severity: str) -> None:
        assert self.stats is not None
        drift = (self.stats.get("drift") or {}) if self.stats.get("complete") else {}
        # An embedding view's drift is its centroid's; a feature view's, its largest PSI.
        max_drift = drift.get("centroid_shift") if "centroid_shift" in drift else None
        if max_drift is None:
            max_drift = drift.get("max_psi")
        newest = self.stats.get("newest_event_us")
        if isinstance(self.view, EmbeddingViewSpec):
            newest = int(self.as_of.timestamp() * 1e6)
        record = JobStatsRecord(
            job_id=self.job_id,
            workspace=self.workspace,
            view=self.view.name,
            created_at=time.time(),
            scope=self.scope or "online",
            rows=self.stats.get("rows"),
            newest_event=None if newest is None else newest / 1e6,
            max_drift=max_drift,
            stats=self.stats,
        )
        now = time.time()
        raised = [
            AlertRecord(
                id=uuid.uuid4().hex[:12],
                workspace=self.workspace,
                view=self.view.name,
                kind=o.kind,
                subject=o.subject,
                severity=severity,
                message=o.message,
                details=o.to_dict(),
                job_id=self.job_id,
                created_at=now,
                updated_at=now,
            )
            for o in self.failed
        ]
        self.registry.save_job_monitoring(record, self.workspace, self.view.name, raised)
