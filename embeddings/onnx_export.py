"""ONNX export: a local sentence-transformers model folder -> a cached ONNX Runtime model.

The whole model (transformer, pooling and, when the folder declares it, normalization) is traced
once with ``torch.onnx.export`` into one graph with inputs ``input_ids`` and ``attention_mask``
(batch and token axes dynamic) and one output, the sentence embedding. The model's fast tokenizer,
truncating at the model's ``max_seq_length``, is saved next to it, so encoding later needs only
``onnxruntime``, ``tokenizers`` and numpy: no torch import, no download.

``optimize=True`` runs ONNX Runtime's transformer optimizer over the export
(``onnxruntime.transformers.optimizer``, ``model_type="bert"``): attention, embedding + LayerNorm,
skip + LayerNorm and bias + GELU each become one fused operator, and the fused graph is checked
against the plain one (cosine >= 0.9999) before it is kept. A model the optimizer cannot fuse is
kept as exported (``meta.json`` says so in ``fused``). Off by default: on all-MiniLM-L6-v2 the
fused int8 graph was no faster in batches than the plain one (which ONNX Runtime partly fuses
itself at load) and slower for one query (bench/README.md, ``encode.py``).

``quantize="int8"`` adds dynamic int8 quantization (``onnxruntime.quantization.quantize_dynamic``,
int8 weights per output channel, activations quantized per call). The matrix multiplications fed
by the feed-forward activation (GELU), one per layer, stay in float32: their inputs have
outliers that per-tensor activation quantization clips (on all-MiniLM-L6-v2, quantizing them too
drops the mean cosine to the float32 vectors from 0.997 to 0.994 and the worst case from 0.993
to 0.986; per-tensor weights give 0.94). On an optimized graph the fused attention is quantized
as one operator (``QAttention``: the query, key and value projections in one int8 product).

Each variant lives in its own folder under the cache directory::

    <cache_dir>/<model folder name>-<fp32|int8>[-opt]-<key>/
        model.onnx  tokenizer.json  meta.json

``key`` hashes the model folder's path and the name, size and mtime of every file in it (so a
changed or upgraded model gets a new entry), the variant options and this module's format
version. A folder is built under a temporary name in the cache directory and renamed into place
when complete: a reader never sees half a model, and processes exporting at the same time each
build their own copy and all but the first rename discard theirs. Each variant is built from the
one before it, which is cached too: fp32 (the export) -> int8 (quantized), and with ``optimize``
fp32 -> fp32-opt (optimized) -> int8-opt (quantized from the optimized graph).

A cached entry whose ``meta.json`` is unreadable or whose ``model.onnx`` has another size than
the one recorded (a copy cut short, a full disk) is rebuilt, with a warning naming the folder
and the reason on the ``contextkit.embeddings`` logger; so is one that ONNX Runtime refuses to
load (:func:`discard_variant`, called by the encoder).

>>> artifact = export_onnx(packaged_model_path(), quantize="int8")   # doctest: +SKIP
>>> artifact.model_file.name, artifact.dimension                      # doctest: +SKIP
('model.onnx', 384)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EncoderConfigError, EncoderFailure

log = logging.getLogger("contextkit.embeddings")

QUANTIZE_OPTIONS = (None, "int8")
"""The quantization variants: None (float32, as exported) or ``"int8"``."""

_FORMAT = 1  # bump when the exported graph or the folder layout changes: old entries are ignored
_OPSET = 17
_META = "meta.json"
_MODEL = "model.onnx"
_TOKENIZER = "tokenizer.json"
# Texts of different lengths (so the trace sees padding) to export with and to check the result.
_EXPORT_TEXTS = ["a short text", "a somewhat longer example sentence, padded less than the first"]
_CHECK_TEXTS = ["query", "three texts of other lengths than the export inputs", "and one more"]
_ACTIVATIONS = {"Erf", "Gelu", "FastGelu", "BiasGelu", "Tanh"}


@dataclass(frozen=True)
class OnnxArtifact:
    """One cached ONNX variant of a model: its files and what the export recorded about them.

    ``created`` is True when this call exported (or quantized) it, False when it was reused.
    """

    folder: Path
    quantize: str | None
    optimized: bool
    dimension: int
    max_tokens: int | None
    created: bool

    @property
    def model_file(self) -> Path:
        return self.folder / _MODEL

    @property
    def tokenizer_file(self) -> Path:
        return self.folder / _TOKENIZER


def default_cache_dir() -> Path:
    """``$CONTEXTKIT_CACHE_DIR/onnx``, else ``$XDG_CACHE_HOME/contextkit/onnx``, else
    ``~/.cache/contextkit/onnx``."""
    if os.environ.get("CONTEXTKIT_CACHE_DIR"):
        return Path(os.environ["CONTEXTKIT_CACHE_DIR"]).expanduser() / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "contextkit" / "onnx"


def check_quantize(quantize: Any) -> str | None:
    """``quantize`` if it names a known variant, else :class:`EncoderConfigError`."""
    if quantize not in QUANTIZE_OPTIONS:
        raise EncoderConfigError(
            f"unknown quantize option {quantize!r}",
            hint="use quantize: int8, or leave it out for float32",
        )
    return quantize


def default_optimize(quantize: str | None) -> bool:
    """Whether a variant is optimized unless told: no, for both (measured on MiniLM: the fused
    graph was not faster in batches and slower for one query; float32 unfused reproduces torch
    to the last digit). One function, so that a later default per variant changes one place."""
    return False


def cached_variant_folder(
    model_path: str | Path,
    *,
    quantize: str | None = None,
    cache_dir: str | Path | None = None,
    optimize: bool | None = None,
) -> Path:
    """Where the variant of ``model_path`` lives in the cache (whether or not it exists yet)."""
    path = Path(model_path).resolve()
    check_quantize(quantize)
    optimize = default_optimize(quantize) if optimize is None else bool(optimize)
    fingerprint = [
        [str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(path.rglob("*"))
        if f.is_file()
    ]
    key_source = {
        "format": _FORMAT,
        "opset": _OPSET,
        "model": str(path),
        "files": fingerprint,
        "quantize": quantize,
    }
    if optimize:  # only then: the keys of the plain variants stay as before this option existed
        key_source["optimize"] = True
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:16]
    # Packaged models sit in <package>/model: name those by their package.
    label = path.parent.name if path.name == "model" else path.name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:48] or "model"
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / f"{slug}-{quantize or 'fp32'}{'-opt' if optimize else ''}-{key}"


def export_onnx(
    model_path: str | Path,
    *,
    quantize: str | None = None,
    cache_dir: str | Path | None = None,
    optimize: bool | None = None,
) -> OnnxArtifact:
    """The cached ONNX variant of the model folder ``model_path``, exported on first use.

    Exporting needs torch and sentence-transformers and takes seconds to a minute; reusing a
    cached variant reads one small JSON file. ``optimize`` None means
    :func:`default_optimize`. Failures raise :class:`EncoderFailure`.
    """
    optimize = default_optimize(quantize) if optimize is None else bool(optimize)
    folder = cached_variant_folder(
        model_path, quantize=quantize, cache_dir=cache_dir, optimize=optimize
    )
    existing = _read_artifact(folder, created=False)
    if existing is not None:
        return existing
    if quantize is None and not optimize:
        build = lambda tmp: _export_float32(Path(model_path).resolve(), tmp)  # noqa: E731
    elif quantize is None:
        source = export_onnx(model_path, cache_dir=cache_dir, optimize=False)
        build = lambda tmp: _optimize_graph(source, tmp)  # noqa: E731
    else:
        source = export_onnx(model_path, cache_dir=cache_dir, optimize=optimize)
        build = lambda tmp: _quantize_int8(source, tmp)  # noqa: E731
    _publish(folder, build)
    artifact = _read_artifact(folder, created=True)
    if artifact is None:
        raise EncoderFailure(f"the ONNX export at {folder} is incomplete")
    return artifact


def discard_variant(folder: Path, reason: str) -> None:
    """Remove a damaged cache entry so that the next :func:`export_onnx` builds it again,
    logging a warning that names it and why. The folder is renamed away first (atomic), so a
    process reading it at the same time keeps its open files and no reader sees it half gone."""
    log.warning("the cached ONNX model at %s is damaged (%s); rebuilding it", folder, reason)
    trash = folder.with_name(f".{folder.name}.damaged-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return  # another process discarded it first
    except OSError as exc:
        raise EncoderFailure(
            f"the cached ONNX model at {folder} is damaged ({reason}) and could not be removed: "
            f"{exc}",
            hint=f"delete {folder}; it is exported again on next use",
        ) from exc
    shutil.rmtree(trash, ignore_errors=True)


def _read_artifact(folder: Path, *, created: bool) -> OnnxArtifact | None:
    """The entry at ``folder``; None when there is none or it was damaged (then discarded)."""
    if not folder.is_dir():
        return None
    try:
        meta = json.loads((folder / _META).read_text())
        if not isinstance(meta, dict):
            raise ValueError("meta.json holds no object")
        dimension = int(meta["dimension"])
        model_bytes = (folder / _MODEL).stat().st_size
    except FileNotFoundError as exc:
        discard_variant(folder, f"{Path(exc.filename or _MODEL).name} is missing")
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        discard_variant(folder, f"meta.json is unreadable: {type(exc).__name__}: {exc}")
        return None
    expected = meta.get("model_bytes")
    if expected is not None and expected != model_bytes:
        discard_variant(folder, f"model.onnx has {model_bytes} bytes, {expected} were written")
        return None
    return OnnxArtifact(
        folder=folder,
        quantize=meta.get("quantize"),
        optimized=bool(meta.get("optimized")),
        dimension=dimension,
        max_tokens=meta.get("max_tokens"),
        created=created,
    )


def _publish(folder: Path, build: Any) -> None:
    """Build into a temporary sibling folder, then rename it to ``folder`` (atomic on POSIX)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / _META).is_file():
                raise
            # Another process published the same variant first: keep theirs.
    except EncoderFailure:
        raise
    except Exception as exc:
        raise EncoderFailure(
            f"could not export the ONNX model to {folder}: {type(exc).__name__}: {exc}",
            hint="exporting needs torch, sentence-transformers, onnx and onnxruntime",
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_float32(model_path: Path, out: Path) -> None:
    started = time.perf_counter()
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(key, "1")
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    # Eager attention traces to plain MatMul/Softmax nodes that ONNX Runtime fuses and quantizes;
    # a separate model instance, so the process's shared (SDPA) model stays as it is.
    model = SentenceTransformer(
        str(model_path), device="cpu", model_kwargs={"attn_implementation": "eager"}
    ).eval()

    class _Embed(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            return self.inner(features)["sentence_embedding"]

    tokenizer = _save_tokenizer(model, out / _TOKENIZER)
    ids, mask = _token_arrays(tokenizer, _EXPORT_TEXTS)
    wrapper = _Embed(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: checked below instead
        torch.onnx.export(
            wrapper,
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            str(out / _MODEL),
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "sentence_embedding": {0: "batch"},
            },
            opset_version=_OPSET,
            dynamo=False,
        )
        check_ids, check_mask = _token_arrays(tokenizer, _CHECK_TEXTS)
        expected = wrapper(torch.from_numpy(check_ids), torch.from_numpy(check_mask)).numpy()
    got = _run_onnx(out / _MODEL, check_ids, check_mask)
    cosine = _row_cosines(got, expected)
    if got.shape != expected.shape or float(np.min(cosine)) < 0.9999:
        raise EncoderFailure(
            f"the ONNX export of {model_path} does not reproduce the model "
            f"(cosine {float(np.min(cosine)):.4f} on inputs of another shape than the trace's)",
            hint="this model's architecture does not trace to ONNX; use backend: torch",
        )
    _write_meta(
        out,
        quantize=None,
        optimized=False,
        dimension=int(expected.shape[1]),
        max_tokens=model.max_seq_length,
        model_path=str(model_path),
        seconds=time.perf_counter() - started,
    )


def _optimize_graph(source: OnnxArtifact, out: Path) -> None:
    """ONNX Runtime's BERT optimizer over ``source``: fused attention, LayerNorms and GELUs.

    The fused graph must give the plain graph's vectors (cosine >= 0.9999 on texts of other
    shapes than the trace's); when it does not, or the optimizer fails, the plain graph is kept
    and ``fused`` in ``meta.json`` is empty, so the variant still works, only unfused."""
    started = time.perf_counter()
    import numpy as np

    source_meta = json.loads((source.folder / _META).read_text())
    model_path = Path(source_meta["model_path"])
    config = _read_json(model_path / "config.json")
    fused: dict[str, int] = {}
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize_model(
                str(source.model_file),
                model_type="bert",
                num_heads=int(config.get("num_attention_heads", 0)),
                hidden_size=int(config.get("hidden_size", 0)),
                opt_level=0,  # the fusions only; ONNX Runtime's own passes run at load
                use_gpu=False,
            )
        fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
        optimized.save_model_to_file(str(out / _MODEL))
        tokenizer = _load_tokenizer(source.tokenizer_file)
        ids, mask = _token_arrays(tokenizer, _CHECK_TEXTS)
        cosine = float(
            np.min(
                _row_cosines(
                    _run_onnx(out / _MODEL, ids, mask), _run_onnx(source.model_file, ids, mask)
                )
            )
        )
        if cosine < 0.9999:
            raise ValueError(f"the fused graph's vectors differ (cosine {cosine:.5f})")
    except Exception as exc:  # noqa: BLE001 - an architecture the optimizer does not know
        log.warning(
            "ONNX Runtime's optimizer could not fuse %s (%s: %s); keeping the plain graph",
            model_path,
            type(exc).__name__,
            exc,
        )
        fused = {}
        shutil.copyfile(source.model_file, out / _MODEL)
    shutil.copyfile(source.tokenizer_file, out / _TOKENIZER)
    _write_meta(
        out,
        quantize=None,
        optimized=True,
        fused=fused,
        dimension=source.dimension,
        max_tokens=source.max_tokens,
        model_path=str(model_path),
        seconds=time.perf_counter() - started,
    )


def _quantize_int8(source: OnnxArtifact, out: Path) -> None:
    started = time.perf_counter()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep_float = _activation_fed_matmuls(onnx.load(str(source.model_file)))
    source_meta = json.loads((source.folder / _META).read_text())
    quantize_dynamic(
        str(source.model_file),
        str(out / _MODEL),
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=keep_float,
        # Fused operators (Attention, SkipLayerNormalization, ...) are outside ONNX's shape
        # inference: their outputs are float32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    shutil.copyfile(source.tokenizer_file, out / _TOKENIZER)
    _write_meta(
        out,
        quantize="int8",
        optimized=source.optimized,
        fused=source_meta.get("fused"),
        dimension=source.dimension,
        max_tokens=source.max_tokens,
        model_path=source_meta["model_path"],
        seconds=time.perf_counter() - started,
        float_nodes=keep_float,
    )


def _activation_fed_matmuls(model: Any, depth: int = 5) -> list[str]:
    """Names of MatMul nodes whose input comes from a GELU-like activation within ``depth``
    nodes upstream: the feed-forward output projections (one per transformer layer)."""
    producer = {output: node for node in model.graph.node for output in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        frontier, seen = [node.input[0]], set()
        for _ in range(depth):
            parents = [producer[name] for name in frontier if name in producer]
            if any(p.op_type in _ACTIVATIONS for p in parents):
                found.append(node.name)
                break
            # Stop at the previous projection: its activation belongs to another MatMul.
            parents = [p for p in parents if p.op_type != "MatMul" and p.name not in seen]
            frontier = [i for p in parents for i in p.input]
            seen.update(p.name for p in parents)
    return found


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def _save_tokenizer(model: Any, path: Path) -> Any:
    """The model's fast tokenizer, truncating at its ``max_seq_length``, saved to ``path``."""
    from tokenizers import Tokenizer

    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise EncoderFailure(
            "the model has no fast (Rust) tokenizer, which the ONNX backend needs",
            hint="use backend: torch for this model",
        )
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    if model.max_seq_length:
        tokenizer.enable_truncation(int(model.max_seq_length))
    tokenizer.save(str(path))
    return tokenizer


def _token_arrays(tokenizer: Any, texts: list[str]) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` int64 arrays, right-padded with the tokenizer's pad id."""
    import numpy as np

    encodings = tokenizer.encode_batch(texts)
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(texts), width), pad_token_id(tokenizer), dtype=np.int64)
    mask = np.zeros((len(texts), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    return ids, mask


def pad_token_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's configured pad token, else ``[PAD]``/``<pad>``."""
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in ("[PAD]", "<pad>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    return 0


def _run_onnx(model_file: Path, ids: Any, mask: Any) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def _row_cosines(a: Any, b: Any) -> Any:
    import numpy as np

    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _write_meta(out: Path, **fields: Any) -> None:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("torch", "sentence-transformers", "onnx", "onnxruntime"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    float_nodes = fields.pop("float_nodes", None)
    meta = {
        "format": _FORMAT,
        **fields,
        "seconds": round(fields["seconds"], 2),
        "model_bytes": (out / _MODEL).stat().st_size,
        "versions": versions,
        "float_nodes": float_nodes,
    }
    (out / _META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
