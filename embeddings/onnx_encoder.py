"""A sentence-transformers model run by ONNX Runtime: same vectors as torch, less time per call.

:class:`OnnxEncoder` is a :class:`~.encoders.SentenceTransformerEncoder` whose model runs as the
ONNX graph that :func:`~.onnx_export.export_onnx` builds from the same local folder (exported on
first use into a cache directory, then reused by every process). Encoding needs ``onnxruntime``,
``tokenizers`` and numpy only; torch is imported when the model is exported, never after.

In a repo config::

    models:
      minilm: {type: sentence-transformers, path: default, backend: onnx, quantize: int8}

Batches (:meth:`OnnxEncoder.encode`) are tokenized in one call and ordered by length, then run in
length buckets: consecutive texts of that order share one ``session.run`` while padding them to the
bucket's longest text adds at most an eighth to their tokens (and the bucket stays within
``batch_size`` texts and 4,096 tokens); the vectors come back in the caller's order. A batch of 32
eval-set documents padded to its longest text is 59-72% padding; in buckets, 9%, and attention's
cost grows with the square of the padded length. One query (:meth:`OnnxEncoder.encode_query`) skips
all of that: one tokenizer call, one ``session.run`` on a 1 x n array without padding, in the
calling thread, and its vector is kept in a bounded LRU cache (:class:`~.query_cache.QueryCache`).

``quantize="int8"`` runs the int8 variant (see :mod:`.onnx_export`; ``optimize=True`` quantizes the
graph ONNX Runtime's transformer optimizer fused instead of the plain export), a file of about a
quarter of the size (23 MB vs 90 MB for MiniLM), faster on CPUs with int8 dot-product instructions,
and vectors with a cosine of about 0.997 to the float32 ones (measured speed and retrieval quality:
the ``bench/encode.py`` section of bench/README.md). Dynamic quantization scales activations per
call, so an int8 vector depends slightly on the other texts of its bucket (buckets hold texts of
about one length, which keeps neighbours alike; a short text padded into one batch with a 400-word
one came out at a cosine of 0.98 to itself encoded alone); float32 vectors do not.

A cached model that ONNX Runtime cannot load (a damaged file) is removed and built again, with a
warning on the ``contextkit.embeddings`` logger (:func:`~.onnx_export.discard_variant`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .encoders import SentenceTransformerEncoder, l2_normalize
from .errors import EncoderConfigError, EncoderFailure
from .onnx_export import (
    OnnxArtifact,
    check_quantize,
    default_optimize,
    discard_variant,
    export_onnx,
    pad_token_id,
)

PADDING_SHARE = 0.125
"""A length bucket grows while padding adds at most this share to its texts' own tokens."""
PADDING_SLACK = 8
"""...or at most this many padding tokens (cheaper than another ``session.run`` for short texts)."""
BUCKET_TOKENS = 4096
"""A length bucket holds at most this many tokens, padding included (bounds a run's memory)."""


class _UnloadableModel(Exception):
    """ONNX Runtime refused a cached model file (then it is rebuilt once)."""


def length_buckets(
    lengths: Sequence[int], max_rows: int, *, padding_share: float = PADDING_SHARE
) -> list[np.ndarray]:
    """Rows of ``lengths`` grouped for padded runs: longest first, each group consecutive in
    that order while padding to its first (longest) row adds at most ``padding_share`` to the
    group's tokens (or :data:`PADDING_SLACK` tokens), with at most ``max_rows`` rows and
    :data:`BUCKET_TOKENS` padded tokens.

    >>> [b.tolist() for b in length_buckets([3, 40, 38, 4, 39], max_rows=8)]
    [[1, 4, 2], [3, 0]]
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-sizes, kind="stable")
    buckets: list[np.ndarray] = []
    start, tokens = 0, 0
    for i, row in enumerate(order):
        n = int(sizes[row])
        width, rows = int(sizes[order[start]]), i - start + 1
        if i > start and (
            rows > max_rows
            or rows * width > BUCKET_TOKENS
            or rows * width - (tokens + n) > max(padding_share * (tokens + n), PADDING_SLACK)
        ):
            buckets.append(order[start:i])
            start, tokens = i, 0
        tokens += n
    if len(order):
        buckets.append(order[start:])
    return buckets


class _Runtime:
    """One loaded ONNX variant: the session and its tokenizers (shared per process)."""

    def __init__(self, artifact: OnnxArtifact, threads: int | None) -> None:
        """Raises :class:`EncoderFailure` when a library is missing, :class:`_UnloadableModel`
        when ONNX Runtime refuses the file."""
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EncoderFailure(
                f"the ONNX backend needs onnxruntime and tokenizers: {exc}",
                hint="pip install onnxruntime (tokenizers comes with sentence-transformers)",
            ) from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one sequential graph: no second pool to wake up
        # Idle pool threads sleep instead of spinning: on a server's shared cores spinning took
        # CPU from the threads doing the work (2 cores, loaded: one query 21 ms vs 36 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(artifact.model_file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise _UnloadableModel(f"ONNX Runtime could not load it: {exc}") from exc
        self.output = self.session.get_outputs()[0].name
        self.tokenizer = Tokenizer.from_file(str(artifact.tokenizer_file))  # truncates
        self.span_tokenizer = Tokenizer.from_file(str(artifact.tokenizer_file))
        self.span_tokenizer.no_truncation()
        self.pad_id = pad_token_id(self.tokenizer)

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {"input_ids": ids, "attention_mask": mask})[0]


_runtimes: dict[tuple[str, int | None], _Runtime] = {}
_runtimes_lock = threading.Lock()


def _load_runtime(artifact: OnnxArtifact, threads: int | None) -> _Runtime:
    key = (str(artifact.folder), threads)
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = _runtimes[key] = _Runtime(artifact, threads)
    return runtime


class OnnxEncoder(SentenceTransformerEncoder):
    """A local sentence-transformers model folder, encoded with ONNX Runtime on CPU.

    Options beyond :class:`SentenceTransformerEncoder`'s: ``quantize`` (None or ``"int8"``),
    ``optimize`` (run the graph ONNX Runtime's transformer optimizer fused; default no),
    ``length_buckets`` (False pads each ``batch_size`` slice of the length
    order to its longest text instead of bucketing by length), ``cache_dir`` (where exports are
    kept; default :func:`~.onnx_export.default_cache_dir`) and ``threads`` (ONNX Runtime's intra-op
    threads; default: one per physical core). The name stays the model's
    (``sentence-transformers/all-MiniLM-L6-v2``): the vectors are the same model's, so switching
    backends does not re-encode stored chunks; ``variant`` says ``onnx-int8`` (``-plain`` or
    ``-opt`` appended where ``optimize`` is not the default).

    >>> enc = OnnxEncoder(quantize="int8")            # doctest: +SKIP
    >>> enc.encode_query("red running shoes").shape    # doctest: +SKIP
    (384,)
    """

    backend = "onnx"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        name: str | None = None,
        batch_size: int = 32,
        normalize: bool = True,
        quantize: str | None = None,
        optimize: bool | None = None,
        length_buckets: bool = True,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
        query_cache_size: int = 4096,
    ) -> None:
        super().__init__(
            path,
            name=name,
            batch_size=batch_size,
            normalize=normalize,
            query_cache_size=query_cache_size,
        )
        self.quantize = check_quantize(quantize)
        if optimize is not None and not isinstance(optimize, bool):
            raise EncoderConfigError(f"optimize must be true or false, got {optimize!r}")
        self.optimize = default_optimize(self.quantize) if optimize is None else optimize
        self.length_buckets = bool(length_buckets)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        if threads is not None and (
            not isinstance(threads, int) or isinstance(threads, bool) or threads < 1
        ):
            raise EncoderConfigError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self._artifact: OnnxArtifact | None = None
        self._runtime: _Runtime | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"OnnxEncoder(name={self.name!r}, path={str(self.path)!r}, quantize={self.quantize!r}, "
            f"optimize={self.optimize!r})"
        )

    @property
    def variant(self) -> str:
        suffix = ""
        if self.optimize != default_optimize(self.quantize):
            suffix = "-opt" if self.optimize else "-plain"
        return f"onnx-{self.quantize or 'fp32'}{suffix}"

    @property
    def artifact(self) -> OnnxArtifact:
        """The cached ONNX files (exported on first access when missing)."""
        if self._artifact is None:
            with self._lock:
                if self._artifact is None:
                    self._artifact = export_onnx(
                        self.path,
                        quantize=self.quantize,
                        cache_dir=self.cache_dir,
                        optimize=self.optimize,
                    )
        return self._artifact

    @property
    def model(self) -> Any:
        """The ``onnxruntime.InferenceSession`` (exports and loads on first access)."""
        return self._loaded().session

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        runtime = self._loaded()
        encodings = runtime.tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        # Longest first, so the first run shows the peak memory.
        if self.length_buckets:
            buckets = length_buckets(lengths, self.batch_size)
        else:
            order = np.argsort(-lengths, kind="stable")
            buckets = [
                order[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)
            ]
        out: np.ndarray | None = None
        for rows in buckets:
            width = int(lengths[rows].max())
            ids = np.full((len(rows), width), runtime.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                n = lengths[row]
                ids[i, :n] = encodings[row].ids
                mask[i, :n] = 1
            vectors = runtime.run(ids, mask)
            if out is None:
                out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
        assert out is not None
        if self.normalize:
            out = l2_normalize(out).astype(np.float32, copy=False)
        self._dimension = out.shape[1]
        return out

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of each of the model's tokens in ``text`` (no specials)."""
        encoding = self._loaded().span_tokenizer.encode(text, add_special_tokens=False)
        return [(int(s), int(e)) for s, e in encoding.offsets if e > s]

    def _encode_one(self, text: str) -> np.ndarray:
        runtime = self._loaded()
        ids = np.asarray([runtime.tokenizer.encode(text).ids], dtype=np.int64)
        vector = runtime.run(ids, np.ones_like(ids))[0]
        if self.normalize:
            norm = float(np.linalg.norm(vector))
            if norm:
                vector = vector / norm
        return vector.astype(np.float32, copy=False)

    def _loaded(self) -> _Runtime:
        runtime = self._runtime
        if runtime is None:
            artifact = self.artifact
            try:
                runtime = _load_runtime(artifact, self.threads)
            except _UnloadableModel as exc:
                if artifact.created:  # just built and still unloadable: not the cache's fault
                    raise EncoderFailure(
                        f"ONNX Runtime could not load {artifact.model_file}: {exc.__cause__}",
                        hint="use backend: torch for this model",
                    ) from exc
                with self._lock:
                    discard_variant(artifact.folder, str(exc))
                    self._artifact = None
                artifact = self.artifact  # built again
                try:
                    runtime = _load_runtime(artifact, self.threads)
                except _UnloadableModel as again:
                    raise EncoderFailure(
                        f"ONNX Runtime could not load {artifact.model_file}: {again.__cause__}",
                        hint=f"delete {artifact.folder}; it is exported again on next use",
                    ) from again
            self._runtime = runtime
            self._dimension = artifact.dimension
        return runtime

    def _dimension_from_model(self) -> int:
        return self.artifact.dimension
