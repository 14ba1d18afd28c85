"""Query building: one ranked list from one source, with no store state. Exact cosine search
in numpy over an in-memory copy (:class:`ExactCache`), LanceDB vector search (flat or through
the ANN index, with query parameters) and BM25 full-text search; each returns rows best first,
ties by id.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from contextkit.stores._vector_common import (
    InvalidSearchError,
)
from contextkit.stores._vector_filters import Condition, compile_filter, filter_mask


@dataclass
class ExactCache:
    version: int
    table: pa.Table  # every column but the vector
    matrix: np.ndarray | None  # (n, dim) float32, rows L2-normalized; None in a compact copy
    ids: np.ndarray
    nan_columns: frozenset[str]
    # The projected copy a "projected" plan searches (see projected_search), built for the plan
    # calibrated at ``projected_for``: the projection (dim x d, float32) and the rows' scan.
    projected_for: str | None = None
    projection: np.ndarray | None = None
    scan: ProjectedScan | None = None
    # A compact copy (a projected plan with ``refine_bits``: see compact_search) keeps the
    # vectors as 8-bit codes instead, and ``matrix`` is None.
    compact: CompactRows | None = None


@dataclass
class CompactRows:
    """The vectors of a compact copy: each row's unit vector as int8 codes (rows x dim, each
    dimension's largest magnitude mapped to 127: ``codes * scale`` is within half a step of
    it), and the unit float vectors in a file (:class:`SpilledVectors`) that the final ranking
    reads its few rows from."""

    codes: np.ndarray  # (rows, dim) int8
    scale: np.ndarray  # (dim,) float32
    unit: SpilledVectors

    @property
    def nbytes(self) -> int:
        """The codes' bytes (the file's pages are the OS page cache's, as LanceDB's are)."""
        return int(self.codes.nbytes)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The unit float vectors of ``rows``, in the order given."""
        return self.unit.read(rows)


class SpilledVectors:
    """Unit float vectors (rows x dim float32) in a file of ``folder`` (a local store's own
    folder, on the disk that holds the tables; default the temporary folder, which may be a
    tmpfs held in memory), removed from the folder as soon as it is made: it lives as long as
    this object holds it open, and a crash leaves nothing behind. Rows are read one ``pread``
    each into the caller's memory; the OS page cache keeps the pages read, as it keeps
    LanceDB's (not mapped: a mapping's read-ahead had put 1.2 GB of the file in the process's
    resident memory after 300 queries at 1M x 384 rows). A compact copy's final step reads
    20-odd rows per query: microseconds, where LanceDB's ``take_offsets`` of 20 rows took 2-3
    ms, most of it per call (issue 19 bench). Disk: rows x dim x 4 bytes while held."""

    def __init__(self, rows: int, dim: int, folder: str | None = None) -> None:
        try:
            fd, path = tempfile.mkstemp(prefix="contextkit-vectors-", suffix=".f32", dir=folder)
        except OSError:  # a read-only store folder: the temporary folder
            if folder is None:
                raise
            fd, path = tempfile.mkstemp(prefix="contextkit-vectors-", suffix=".f32")
        self._closed = weakref.finalize(self, os.close, fd)
        os.unlink(path)
        self._fd = fd
        self.shape = (rows, dim)
        self._row_bytes = dim * 4

    def write(self, at: int, block: np.ndarray) -> None:
        """Write ``block`` (unit vectors) as rows ``at`` onward."""
        data = memoryview(np.ascontiguousarray(block, dtype=np.float32)).cast("B")
        offset, done = at * self._row_bytes, 0
        while done < len(data):  # pwrite may write less than asked (a full disk raises)
            done += os.pwrite(self._fd, data[done:], offset + done)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows``, in the order given."""
        size = self._row_bytes
        out = bytearray(len(rows) * size)
        for i, row in enumerate(rows.tolist()):
            chunk = os.pread(self._fd, size, row * size)
            if len(chunk) != size:
                raise RuntimeError(f"row {row} is past the spilled vectors' file")
            out[i * size : (i + 1) * size] = chunk
        return np.frombuffer(out, dtype=np.float32).reshape(len(rows), self.shape[1])


def query_vector(vector: Any, dim: int) -> np.ndarray:
    if vector is None:
        raise InvalidSearchError("a vector search needs the query vector (encode the query text)")
    try:
        query = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidSearchError(f"the query vector is not a list of numbers: {exc}") from None
    if query.ndim != 1 or query.shape[0] != dim:
        raise InvalidSearchError(
            f"the query vector has shape {query.shape}, the table stores {dim} dimensions",
            hint="encode the query with the view's model",
        )
    if not np.isfinite(query).all():
        raise InvalidSearchError("the query vector holds NaN or infinite values")
    if not query.any():
        raise InvalidSearchError("the query vector is all zeros (cosine similarity is undefined)")
    return query


def exact_search(
    cache: ExactCache, query: np.ndarray, conditions: list[Condition], k: int
) -> list[dict[str, Any]]:
    # einsum, not ``matrix @ q``: BLAS runs a matrix-vector product on a thread pool, and on a
    # busy 2-core machine that took 8 ms at 5k x 384 against 0.4 ms single-threaded here.
    similarity = np.einsum("ij,j->i", cache.matrix, query / np.linalg.norm(query))
    if conditions:
        mask = filter_mask(conditions, cache.table)
        similarity = np.where(mask, similarity, -np.inf)
        available = int(mask.sum())
    else:
        available = len(similarity)
    k = min(k, available)
    if k == 0:
        return []
    return _best_rows(cache, similarity, None, k)


def _best_rows(
    cache: ExactCache, similarity: np.ndarray, rows_of: np.ndarray | None, k: int
) -> list[dict[str, Any]]:
    """The ``k`` best of ``similarity`` (over all rows, or over the rows ``rows_of``), ordered by
    distance then id, as table rows with ``_distance``."""
    # Candidates: the k most similar rows plus any within rounding of the k-th, so that rows
    # whose distances tie once computed as 1 - similarity are all there to be ordered by id.
    kth = np.partition(similarity, len(similarity) - k)[len(similarity) - k]
    candidates = np.flatnonzero(similarity >= kth - 1e-6)
    distances = (np.float32(1.0) - similarity[candidates]).astype(np.float32)
    if rows_of is not None:
        candidates = rows_of[candidates]
    order = sorted(range(len(candidates)), key=lambda i: (distances[i], cache.ids[candidates[i]]))
    chosen = [int(candidates[i]) for i in order[:k]]
    rows = cache.table.take(pa.array(chosen, pa.int64())).to_pylist()
    for row, i in zip(rows, order[:k], strict=True):
        row["_distance"] = float(distances[i])
    return rows


def projection_of(matrix: np.ndarray, dims: int, sample: int = 4096, seed: int = 0) -> np.ndarray:
    """The ``dims`` directions that keep most of the inner products with the rows of ``matrix``
    (top eigenvectors of the uncentred second-moment matrix of a sample of rows), as a
    (dim x dims) float32 matrix, most important first."""
    rng = np.random.default_rng(seed)
    rows = matrix if len(matrix) <= sample else matrix[rng.choice(len(matrix), sample, False)]
    moments = rows.T.astype(np.float64) @ rows.astype(np.float64)
    values, vectors = np.linalg.eigh(moments)
    return np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)


class ProjectedScan:
    """Every row's projected vector (rows x dims) scored against projected queries: the scan a
    projected search takes its shortlist from (see :func:`projected_search`).

    ``bits=8``, what calibration measures when ONNX Runtime is installed: each direction is
    rounded to integers within -63..63 (its largest magnitude maps to 63; see
    :func:`quantize_rows`), a query to 8 bits once the directions' scales are folded into it,
    and ONNX Runtime's integer matrix product
    (``MatMulInteger``, its weights pre-packed for the CPU's int8 dot-product instructions)
    returns int32 scores, on the calling thread. A quarter of the float copy's bytes per scan:
    200k x 128 rows took 1.4-1.9 ms against 4.3-5.1 ms for float32 einsum on 2 cores (issue 19
    bench). Codes over ``SCAN_ONE_THREAD_MAX_BYTES`` no longer fit a CPU's last-level cache and
    the scan waits on memory: there it runs on two threads (the caller's and one of ONNX
    Runtime's, which sleeps between scans), 1.2M x 128 rows in 8.0 ms against 15.5 on one. The
    rounding moves rows across the shortlist's cut; calibration measured the shortlist with it.

    ``bits=32``: float32 einsum on the calling thread (plans calibrated before the 8-bit scan,
    stores without ONNX Runtime, copies over 1 GiB, which one ONNX model cannot hold). Not BLAS:
    over a transposed copy (dims x rows) BLAS's pool scanned 200k x 128 in 1.8 ms against
    einsum's 4.5 on a quiet 2-core machine, but timed by calibration it was 8.3x einsum at 20k
    rows, 0.57x at 50k and 1.42x at 200k (issue 19 bench, load 4-8)."""

    def __init__(self, reduced: np.ndarray, bits: int = 8) -> None:
        if bits not in (8, 32):
            raise ValueError(f"a projected scan has 8 or 32 bits per value, not {bits}")
        self.rows, self.dims = reduced.shape
        if bits == 8 and not int8_scan_available(reduced.size):
            bits = 32
        self.bits = bits
        if bits == 32:
            self._reduced = np.ascontiguousarray(reduced, dtype=np.float32)
            self.threads = 1
            return
        self._from_codes(*quantize_rows(reduced))

    @classmethod
    def of_codes(cls, scale: np.ndarray, codes: np.ndarray) -> ProjectedScan:
        """The 8-bit scan of rows already rounded by :func:`quantize_rows` (a compact copy,
        which never holds the float rows); 32 bits, dequantized, when ONNX Runtime is not
        there."""
        if not int8_scan_available(codes.size):
            return cls(codes.astype(np.float32) * scale, bits=32)
        scan = cls.__new__(cls)
        scan.rows, scan.dims = codes.shape
        scan.bits = 8
        scan._from_codes(scale, codes)
        return scan

    def _from_codes(self, scale: np.ndarray, codes: np.ndarray) -> None:
        self.scale = scale
        self.threads = 1 if codes.nbytes <= SCAN_ONE_THREAD_MAX_BYTES else 2
        self._session = _int8_scan_session(np.ascontiguousarray(codes.T), self.threads)

    @property
    def nbytes(self) -> int:
        """About the memory the scan holds: the float copy, or ONNX Runtime's packed int8
        weights (a byte per value and a sum per row: 1M x 128 held 126 MiB after a trim of the
        C heap, the float copy 488). Building the 8-bit scan briefly takes about twice the
        codes' size more; the C allocator may keep that freed memory in the process for
        reuse."""
        return self.rows * (self.dims * 4 if self.bits == 32 else self.dims + SCAN_ROW_BYTES)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Scores (queries x rows; higher is closer) of projected ``queries`` (queries x dims),
        comparable within a query only."""
        if self.bits == 32:
            if len(queries) > 1:  # calibration's batches: BLAS (4x einsum at 32 x 50k x 128)
                return queries @ self._reduced.T
            return np.einsum("ij,kj->ki", self._reduced, queries)
        (scores,) = self._session.run(None, {"query": quantize_queries(queries, self.scale)})
        return scores


SCAN_ROW_BYTES = 8
"""What the 8-bit scan holds per row beside its codes (ONNX Runtime's packed weights keep a
4-byte sum per row; counted at 8)."""


def quantize_rows(reduced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-direction scales (dims, float32) and codes (rows x dims, int8 within -63..63):
    ``codes * scale`` is within half a scale step of ``reduced``.

    Not -127..127: on x86 CPUs without VNNI, ONNX Runtime's uint8 x int8 kernel adds each pair
    of products in saturating 16-bit arithmetic (``vpmaddubsw``), and with query values up to
    255 a pair reaches 2 x 255 x 127 = 64,770, past 32,767: the best rows' scores would be
    clipped. At 63 a pair stays within 32,130, so the scores are exact on every kernel (the
    option that makes ORT exact there, ``session.x64quantprecision``, cost 1.4x on this VNNI
    machine). On 200k real passages the shortlists' recall of the true top 10 was the same
    within 0.001 at either range (issue 19 bench)."""
    scale = code_scale(np.abs(reduced).max(axis=0), ROW_LEVELS)
    return scale, encode(reduced, scale, ROW_LEVELS)


def quantize_vectors(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension scales (dim, float32) and codes (rows x dim, int8 within -127..127) of a
    compact copy's unit vectors (:class:`CompactRows`); serving makes the same codes block by
    block (``VectorSearch._load_compact``)."""
    scale = code_scale(np.abs(matrix).max(axis=0), REFINE_LEVELS)
    return scale, encode(matrix, scale, REFINE_LEVELS)


def code_scale(top: np.ndarray, levels: int) -> np.ndarray:
    """Per-column scales mapping each column's largest magnitude ``top`` to ``levels``."""
    return np.where(top > 0, top / levels, 1).astype(np.float32)


def encode(values: np.ndarray, scale: np.ndarray, levels: int) -> np.ndarray:
    """``values`` (rows x columns) as int8 codes on the columns' ``scale``, within
    -``levels``..``levels`` (in blocks of rows: the float temporaries stay small)."""
    codes = np.empty(values.shape, dtype=np.int8)
    for start in range(0, len(values), 65536):
        block = np.rint(values[start : start + 65536] / scale)
        codes[start : start + 65536] = np.clip(block, -levels, levels)
    return codes


ROW_LEVELS = 63
"""The largest code of a projected row's direction (see :func:`quantize_rows`)."""


def quantize_queries(queries: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Projected queries (queries x dims) as the uint8 input of the 8-bit scan (zero point 128):
    the rows' scales folded in, each query rounded on its own scale (largest magnitude 127)."""
    folded = np.asarray(queries, dtype=np.float32) * scale
    top = np.abs(folded).max(axis=1, keepdims=True)
    step = np.where(top > 0, top / 127, 1)
    return (np.clip(np.rint(folded / step), -127, 127) + 128).astype(np.uint8)


_INT8_SCAN_MAX_VALUES = 1 << 30  # one session's codes (written once to the temporary folder)

SCAN_ONE_THREAD_MAX_BYTES = 32 << 20
"""The 8-bit scan runs on one thread up to this many bytes of codes (200k x 128 rows: 24 MiB),
on two above (see :class:`ProjectedScan`)."""


def int8_scan_available(values: int = 0) -> bool:
    """Whether the 8-bit scan can run here: ONNX Runtime and onnx import, and ``values`` codes
    are within what one model holds."""
    return values <= _INT8_SCAN_MAX_VALUES and _int8_libraries()


@functools.cache
def _int8_libraries() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except (ImportError, OSError):  # not installed, or a broken install (a missing shared lib)
        return False
    return True


def _int8_scan_session(codes: np.ndarray, threads: int) -> Any:
    """An ONNX Runtime session scoring uint8 queries (zero point 128; queries x dims) against
    ``codes`` (dims x rows, int8, held by the session as a constant) on ``threads`` threads,
    the caller's first, the others not spinning between runs; no memory arena (a calibration
    batch's scores would stay allocated).

    The codes reach ONNX Runtime as a file of external data beside the model, in a temporary
    folder removed once the session is made: ONNX Runtime maps the file, packs the weights for
    its kernel and drops the mapping, so the session holds one copy of the codes (the packed
    one). Passed inside the model's bytes they stayed held twice: 248 MiB for 1M x 128 codes,
    against 126-136 MiB this way (issue 19 bench)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    dims, rows = codes.shape
    weights = TensorProto(name="rows", dims=[dims, rows], data_type=TensorProto.INT8)
    for key, value in (("location", "rows.bin"), ("offset", "0"), ("length", str(codes.nbytes))):
        weights.external_data.add(key=key, value=value)
    weights.data_location = TensorProto.EXTERNAL
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["query", "rows", "zero"], ["scores"])],
        "projected_scan",
        [helper.make_tensor_value_info("query", TensorProto.UINT8, ["queries", dims])],
        [helper.make_tensor_value_info("scores", TensorProto.INT32, ["queries", rows])],
        initializer=[weights, numpy_helper.from_array(np.array(128, dtype=np.uint8), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what ONNX Runtime 1.17 (the lowest supported) reads
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = False
    with tempfile.TemporaryDirectory(prefix="contextkit-scan-") as folder:
        np.ascontiguousarray(codes).tofile(os.path.join(folder, "rows.bin"))
        path = os.path.join(folder, "scan.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def top_rows(scores: np.ndarray, n: int) -> np.ndarray:
    """The indices of the ``n`` highest ``scores`` (in no order; ties at the cut either way).

    A full ``argpartition`` over 200k scores took 1.5 ms, a fifth of a projected search at that
    size (the float scan of 200k x 128 projected rows took ~5 ms). So a threshold is read from 4,096
    evenly spaced scores first, set a few standard deviations below where the n-th best of them
    is expected; the rows at or above it are kept (one pass, ~0.1 ms) and the partition runs
    over those. When fewer than ``n`` pass (scores sorted by row, say), the full partition
    answers: the rows are the same either way. ``bench/_raw_search.py`` (``best_rows``) does the
    same in plain numpy for the benchmarks' raw baseline: change both together."""
    total = len(scores)
    if n >= total:
        return np.arange(total)
    if total >= 8 * _THRESHOLD_SAMPLE:
        sample = scores[:: total // _THRESHOLD_SAMPLE]
        expected = n * len(sample) / total  # how many of the sample are among the n best
        rank = min(len(sample) - 1, math.ceil(expected + 4 * math.sqrt(expected) + 8))
        cut = np.partition(sample, len(sample) - 1 - rank)[len(sample) - 1 - rank]
        passed = np.flatnonzero(scores >= cut)
        if len(passed) >= n:
            return passed[np.argpartition(scores[passed], len(passed) - n)[len(passed) - n :]]
    return np.argpartition(scores, total - n)[total - n :]


_THRESHOLD_SAMPLE = 4096


def projected_search(cache: ExactCache, query: np.ndarray, k: int, shortlist: int) -> list[dict]:
    """Cosine search in two steps over the in-memory copy: the ``shortlist`` best rows by their
    projection onto a few directions (``cache.scan``, rows x d), then the exact cosine over
    those rows' full vectors. Approximate (a true top-k row may miss the shortlist); its recall
    is what calibration measured. Unfiltered queries only."""
    assert cache.scan is not None and cache.projection is not None
    q = query / np.linalg.norm(query)
    rows_of = top_rows(cache.scan.scores((q @ cache.projection)[None, :])[0], shortlist)
    k = min(k, len(rows_of))
    if k == 0:
        return []
    # np.take, not ``matrix[rows_of]``: numpy's fancy indexing took 0.68 ms for 1,600 of 200k
    # rows x 384, np.take 0.32 (issue 19 bench)
    similarity = np.einsum("ij,j->i", np.take(cache.matrix, rows_of, axis=0), q)
    return _best_rows(cache, similarity, rows_of, k)


REFINE_LEVELS = 127
"""The largest code of a compact copy's vector dimension (:class:`CompactRows`)."""


def compact_search(
    cache: ExactCache, query: np.ndarray, k: int, shortlist: int, rerank: int
) -> list[dict]:
    """The projected search over a compact copy (no float vectors in memory), in three steps:
    the ``shortlist`` best rows by the 8-bit projected scan, the ``rerank`` best of those by
    their 8-bit vectors (:class:`CompactRows`; off by up to half a step per dimension, which
    reorders near ties), then the exact cosine over those rows' float vectors (read from a
    file, :class:`SpilledVectors`). Approximate like :func:`projected_search`;
    its recall is what calibration measured. Unfiltered queries only."""
    compact = cache.compact
    assert compact is not None and cache.scan is not None and cache.projection is not None
    q = query / np.linalg.norm(query)
    rows_of = top_rows(cache.scan.scores((q @ cache.projection)[None, :])[0], shortlist)
    if min(k, len(rows_of)) == 0:
        return []
    # 6,400 of 1M rows: np.take + BLAS 0.9 ms, fancy indexing + einsum 1.7 (issue 19 bench)
    gathered = np.take(compact.codes, rows_of, axis=0).astype(np.float32)
    approximate = gathered @ (q * compact.scale)
    best = rows_of[top_rows(approximate, min(max(rerank, k), len(rows_of)))]
    similarity = np.einsum("ij,j->i", compact.vectors(best), q).astype(np.float32)
    return _best_rows(cache, similarity, best, min(k, len(best)))


def lance_vector_search(
    handle: Any,
    query: np.ndarray,
    conditions: list[Condition],
    k: int,
    columns: list[str],
    exact: bool = True,
    params: Mapping[str, int] | None = None,
    bypass_index: bool = False,
) -> list[dict[str, Any]]:
    expr = compile_filter(conditions)
    # Exact searches fetch a few extra rows so that ties at the cut are ordered by id, as in
    # the numpy path; that costs the ANN index real work (~0.6 ms at 200k), for nothing.
    builder = (
        handle.search(query, vector_column_name="vector")
        .distance_type("cosine")
        .limit(k + 8 if exact else k)
        .select([*columns, "_distance"])
    )
    for name, value in (params or {}).items():
        builder = getattr(builder, name)(int(value))  # ef, nprobes, refine_factor
    if bypass_index:
        builder = builder.bypass_vector_index()
    if expr is not None:
        builder = builder.where(expr, prefilter=True)
    rows = builder.to_arrow().to_pylist()
    rows.sort(key=lambda r: (r["_distance"], r["id"]))
    return rows[:k]


def text_leg(
    handle: Any, text: str, conditions: list[Condition], k: int, columns: list[str]
) -> list[dict[str, Any]]:
    from lancedb.query import MatchQuery

    expr = compile_filter(conditions)
    # MatchQuery: the text is tokenized as-is (no query syntax to inject), terms are ORed.
    builder = handle.search(MatchQuery(text, "text")).limit(k + 8).select([*columns, "_score"])
    if expr is not None:
        builder = builder.where(expr, prefilter=True)
    rows = builder.to_arrow().to_pylist()
    rows.sort(key=lambda r: (-r["_score"], r["id"]))
    return rows[:k]
