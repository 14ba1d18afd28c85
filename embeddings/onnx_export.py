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
int8 weights per output channel, activations quantized per call, one scale per tensor). The
feed-forward output projections (the matrix multiplications fed by GELU, one per layer) need
care: a few of their input channels carry outliers, mostly on the ``[CLS]`` token (on
all-MiniLM-L6-v2 one channel reaches 14-24 in layers 0-3 where the median channel peaks near
0.5), and one per-tensor scale fitted to those leaves the other channels a handful of levels
(quantizing them plainly drops the worst cosine to the float32 vectors from 0.993 to 0.983).
So, in the spirit of LLM.int8()'s outlier decomposition, :func:`_split_outlier_channels` takes
those channels out of the int8 product: they are found by running the float32 graph over a few
built-in calibration texts (channels whose peak exceeds :data:`_OUTLIER_FACTOR` times the
layer's median peak, at most :data:`_MAX_OUTLIER_CHANNELS`), their feed-forward weights are
zeroed in the int8 path (GELU(0) = 0, so they vanish from the quantized tensor at no cost) and a
small float32 side path (``[tokens, 384] x [384, k]``, GELU, ``[tokens, k] x [k, 384]``) adds
their exact contribution back. Everything else is int8. Per-channel smoothing (SmoothQuant,
folding a scale into the weights) was measured and was worse: the outliers sit on one token,
not in whole channels, and the scaled weight rows cost the int8 weights their precision. The
int8 graph is checked against the float32 one on texts other than the calibration's, one at a
time; below a cosine of :data:`_INT8_CHECK_COSINE` (or when a projection's activation is not a
GELU the side path reproduces) the projections stay float32, as before this split. On an
optimized graph the fused attention is quantized as one operator (``QAttention``).

Each variant lives in its own folder under the cache directory::

    <cache_dir>/<model folder name>-<fp32|int8>[-opt]-<key>/
        model.onnx  tokenizer.json  meta.json

``key`` hashes the model folder's path and the name, size and mtime of every file in it (so a
changed or upgraded model gets a new entry), the variant options and this module's format version
(and for int8 the recipe's, :data:`_INT8_RECIPE`: a new recipe re-quantizes from the cached float32
export). A folder is built under a temporary name in the cache directory and renamed into place when
complete: a reader never sees half a model, and processes exporting at the same time each build
their own copy and all but the first rename discard theirs. Each variant is built from the one
before it, which is cached too: fp32 (the export) -> int8 (quantized), and with ``optimize`` fp32 ->
fp32-opt (optimized) -> int8-opt (quantized from the optimized graph).

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
# The int8 recipe's version: part of an int8 entry's cache key, so a changed recipe re-quantizes
# (from the cached float32 export) without exporting the float32 variant again.
_INT8_RECIPE = 2
# Calibration for the outlier channels: the peaks sit on [CLS] and a few fixed channels, so a few
# texts of mixed kinds find them (more texts found the same channels on MiniLM).
_CALIBRATION_TEXTS = [
    *_EXPORT_TEXTS,
    "waterproof hiking boots with a rubber sole and a padded collar, sizes 38 to 47",
    "How do I get my money back for a broken order?",
    "Return a new sorted list from the items in iterable; key and reverse are optional.",
    "list directory contents, sorted alphabetically unless another order is asked for",
    "Stock markets fell sharply today after the central bank raised interest rates again.",
]
_OUTLIER_FACTOR = 6.0
_MAX_OUTLIER_CHANNELS = 32
# A guard against a split that went wrong (a GELU that is not 0 at 0, a bias not found), not the
# quality target: the recipe gives 0.99-0.999 on these texts, a broken split far less.
_INT8_CHECK_COSINE = 0.98
# Nodes between a feed-forward input projection and its output projection that the float32 side
# path reproduces exactly (the exact, erf-based GELU, plain or fused by ONNX Runtime's optimizer).
_ERF_GELU_NODES = {"Add", "Div", "Erf", "Mul", "Gelu", "BiasGelu"}


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
    if quantize == "int8":
        key_source["recipe"] = _INT8_RECIPE
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

    from .encoders import import_torch

    import_torch()
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

    tokenizer = _load_tokenizer(source.tokenizer_file)
    model = onnx.load(str(source.model_file))
    projections = _activation_fed_matmuls(model)
    peaks = _channel_peaks(source.model_file, model, projections, tokenizer)
    outliers = {name: _outlier_channels(peak) for name, peak in peaks.items()}
    split, side_nodes = _split_outlier_channels(model, outliers)
    # Left float32: a projection with outliers that could not be split, or not measured.
    unsplit = [
        name
        for name in projections
        if name not in split and (name not in outliers or len(outliers[name]))
    ]
    staged = out / "split.onnx"
    onnx.save(model, str(staged))
    _quantize_dynamic(staged, out / _MODEL, keep_float=side_nodes + unsplit)
    # Each text alone: padding in a batch moves int8 vectors by itself (module docstring).
    cosine = min(
        float(
            _row_cosines(
                _run_onnx(out / _MODEL, *_token_arrays(tokenizer, [text])),
                _run_onnx(source.model_file, *_token_arrays(tokenizer, [text])),
            )[0]
        )
        for text in _CHECK_TEXTS
    )
    keep_float = side_nodes + unsplit
    if split and cosine < _INT8_CHECK_COSINE:
        log.warning(
            "int8 with outlier channels split off reproduces %s at a cosine of %.4f only; "
            "keeping its feed-forward output projections in float32",
            source.folder,
            cosine,
        )
        _quantize_dynamic(source.model_file, out / _MODEL, keep_float=projections)
        split, keep_float = {}, projections
    staged.unlink()
    source_meta = json.loads((source.folder / _META).read_text())
    shutil.copyfile(source.tokenizer_file, out / _TOKENIZER)
    _write_meta(
        out,
        quantize="int8",
        recipe=_INT8_RECIPE,
        optimized=source.optimized,
        fused=source_meta.get("fused"),
        dimension=source.dimension,
        max_tokens=source.max_tokens,
        model_path=source_meta["model_path"],
        seconds=time.perf_counter() - started,
        float_nodes=keep_float,
        outlier_channels={name: [int(c) for c in split[name]] for name in split},
    )


def _quantize_dynamic(model_file: Path, out_file: Path, *, keep_float: list[str]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(model_file),
        str(out_file),
        weight_type=QuantType.QInt8,
        per_channel=True,
        nodes_to_exclude=keep_float,
        # Fused operators (Attention, SkipLayerNormalization, ...) are outside ONNX's shape
        # inference: their outputs are float32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _channel_peaks(model_file: Path, model: Any, projections: list[str], tokenizer: Any) -> dict:
    """Per projection, the largest absolute value of each input channel over the real (unpadded)
    tokens of :data:`_CALIBRATION_TEXTS`, from the float32 graph."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    inputs = {node.name: node.input[0] for node in model.graph.node if node.name in projections}
    probe = onnx.load(str(model_file))
    for name in inputs.values():
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    ids, mask = _token_arrays(tokenizer, _CALIBRATION_TEXTS)
    values = session.run(list(inputs.values()), {"input_ids": ids, "attention_mask": mask})
    real = mask.astype(bool)
    return {
        node: np.abs(value[real]).max(axis=0)
        for node, value in zip(inputs, values, strict=True)
        if value.ndim == 3
    }


def _outlier_channels(peak: Any) -> Any:
    """The channels whose peak exceeds :data:`_OUTLIER_FACTOR` times the median channel's, the
    largest :data:`_MAX_OUTLIER_CHANNELS` of them, in ascending order."""
    import numpy as np

    over = np.flatnonzero(peak > _OUTLIER_FACTOR * float(np.median(peak)))
    top = over[np.argsort(-peak[over])][:_MAX_OUTLIER_CHANNELS]
    return np.sort(top)


def _split_outlier_channels(model: Any, outliers: dict) -> tuple[dict, list[str]]:
    """Take each projection's outlier channels out of the product to be quantized (see the
    module docstring). Changes ``model`` in place; returns the projections split (name ->
    channels) and the side path's MatMul nodes, which stay float32. A projection whose path
    from its input projection is not a plain or fused erf-GELU with a constant bias is left
    as it is."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    split: dict = {}
    side_nodes: list[str] = []
    inserts = []
    for node in graph.node:
        channels = outliers.get(node.name)
        if channels is None or not len(channels) or node.input[1] not in weights:
            continue
        found = _feed_forward_input(node, producer, weights)
        if found is None:
            continue
        ffn_in, bias_name = found
        w_in = numpy_helper.to_array(weights[ffn_in.input[1]]).copy()
        bias = numpy_helper.to_array(weights[bias_name]).copy()
        w_out = numpy_helper.to_array(weights[node.input[1]]).copy()
        if w_in.ndim != 2 or bias.shape != (w_in.shape[1],) or w_out.shape[0] != w_in.shape[1]:
            continue
        prefix = f"{node.name}/outliers"
        side = {
            "w_in": w_in[:, channels],
            "bias": bias[channels],
            "w_out": w_out[channels, :],
            "sqrt2": np.array(np.sqrt(2.0)),
            "one": np.array(1.0),
            "half": np.array(0.5),
        }
        for key, value in side.items():
            graph.initializer.append(
                numpy_helper.from_array(value.astype(np.float32), f"{prefix}/{key}")
            )
        # Zeroed in the int8 path: the input projection gives 0 there, GELU(0) = 0.
        w_in[:, channels] = 0
        bias[channels] = 0
        w_out[channels, :] = 0
        for name, value in ((ffn_in.input[1], w_in), (bias_name, bias), (node.input[1], w_out)):
            weights[name].CopyFrom(numpy_helper.from_array(value, name))
        output = node.output[0]
        node.output[0] = f"{prefix}/int8_product"
        nodes = _side_path(prefix, ffn_in.input[0], output)
        inserts.append((node.name, nodes))
        side_nodes += [f"{prefix}/MatMul_in", f"{prefix}/MatMul_out"]
        split[node.name] = channels
    for name, nodes in inserts:  # right after the projection: the graph stays in order
        at = next(i for i, n in enumerate(graph.node) if n.name == name) + 1
        for offset, new in enumerate(nodes):
            graph.node.insert(at + offset, new)
    return split, side_nodes


def _side_path(prefix: str, ffn_input: str, output: str) -> list:
    """The float32 nodes of a split projection: its outlier channels' input projection, bias and
    GELU (written as the export writes it, so ONNX Runtime fuses it the same way), their output
    projection, and the sum with the int8 product (``<prefix>/int8_product``) into ``output``."""
    from onnx import helper

    def t(part: str) -> str:
        return f"{prefix}/{part}"

    return [
        helper.make_node("MatMul", [ffn_input, t("w_in")], [t("h0")], name=t("MatMul_in")),
        helper.make_node("Add", [t("h0"), t("bias")], [t("h")], name=t("Add_bias")),
        # GELU(h) = h * (1 + erf(h / sqrt 2)) / 2
        helper.make_node("Div", [t("h"), t("sqrt2")], [t("d")], name=t("Div")),
        helper.make_node("Erf", [t("d")], [t("e")], name=t("Erf")),
        helper.make_node("Add", [t("e"), t("one")], [t("e1")], name=t("Add_one")),
        helper.make_node("Mul", [t("h"), t("e1")], [t("g0")], name=t("Mul")),
        helper.make_node("Mul", [t("g0"), t("half")], [t("g")], name=t("Mul_half")),
        helper.make_node("MatMul", [t("g"), t("w_out")], [t("y")], name=t("MatMul_out")),
        helper.make_node("Add", [t("int8_product"), t("y")], [output], name=t("Add")),
    ]


def _feed_forward_input(projection: Any, producer: dict, weights: dict) -> tuple | None:
    """``(input projection MatMul, bias initializer name)`` feeding ``projection`` through an
    erf-GELU, or None when the nodes between are anything else."""
    between: dict[str, Any] = {}
    frontier, found = [projection.input[0]], None
    while frontier:
        node = producer.get(frontier.pop())
        if node is None or node.name in between or node.op_type == "Constant":
            continue
        if node.op_type == "MatMul":
            if found is not None and found.name != node.name:
                return None
            found = node
            continue
        if node.op_type not in _ERF_GELU_NODES or len(between) > 8:
            return None
        between[node.name] = node
        frontier += [name for name in node.input if name in producer]
    if found is None or found.input[1] not in weights:
        return None
    biases = [
        name
        for node in between.values()
        if node.op_type in ("Add", "BiasGelu")
        for name in node.input
        if name in weights and len(weights[name].dims) == 1 and weights[name].dims[0] > 1
    ]
    return (found, biases[0]) if len(biases) == 1 else None


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
