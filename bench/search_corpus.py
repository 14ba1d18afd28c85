"""Real text passages and their MiniLM vectors for ``bench/search.py`` (cached as .npy).

Passages: the paragraphs of every man page on this machine (roff stripped by the eval-set
builder's reader), then docstring paragraphs and comment lines of Python's standard library,
deduplicated, 40-400 characters. Encoded with the packaged all-MiniLM-L6-v2 through ONNX
Runtime int8 (``OnnxEncoder``; cosine >= 0.99 to the torch vectors, see bench/encode.py) because
torch needs hours for 200k texts on 2 cores. The eval sets' queries are encoded too, so that
search can be timed with real query vectors (not the table's own rows).

    python bench/search_corpus.py --rows 200000 --out /tmp/ckbench
"""

from __future__ import annotations

import argparse
import ast
import gzip
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "evalsets"))
import build as evalsets  # noqa: E402


def _keep(text: str) -> bool:
    return 40 <= len(text) <= 400 and sum(c.isalpha() for c in text) > len(text) // 2


def man_passages() -> Iterator[str]:
    for path in evalsets.man_pages():
        try:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", errors="replace") as f:
                lines = f.read().splitlines()
            text = evalsets._roff_text(lines)
        except Exception:
            continue
        for para in text.split("\n\n"):
            para = " ".join(para.split())
            if _keep(para):
                yield para


def stdlib_passages() -> Iterator[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        try:
            source = path.read_text(errors="replace")
            tree = ast.parse(source)
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                for para in (doc or "").split("\n\n"):
                    para = " ".join(para.split())
                    if _keep(para):
                        yield para
        for line in source.splitlines():
            line = line.strip()
            if line.startswith("#"):
                text = line.lstrip("#").strip()
                if _keep(text):
                    yield text


def passages(limit: int) -> list[str]:
    seen: dict[str, None] = {}
    for source in (man_passages(), stdlib_passages()):
        for p in source:
            seen.setdefault(p, None)
            if len(seen) >= limit:
                return list(seen)
    return list(seen)


def cached_vectors(out: Path, rows: int) -> np.ndarray | None:
    """The longest cached prefix (``vectors_<n>.npy``, n <= rows) of the passages' vectors."""
    best = None
    for path in out.glob("vectors_*.npy"):
        n = int(path.stem.split("_")[1])
        if n <= rows and (best is None or n > best[0]):
            best = (n, path)
    return None if best is None else np.load(best[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/ckbench"))
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    args = ap.parse_args()
    from contextkit.embeddings.onnx_encoder import OnnxEncoder

    args.out.mkdir(parents=True, exist_ok=True)
    texts_file = args.out / "texts.txt"
    texts = texts_file.read_text().split("\n") if texts_file.exists() else []
    if len(texts) < args.rows:  # the passages come in a fixed order: a longer list extends it
        texts = passages(args.rows)
        texts_file.write_text("\n".join(texts))
    texts = texts[: args.rows]
    print(f"{len(texts)} passages", flush=True)
    enc = OnnxEncoder(
        quantize="int8", cache_dir=args.out / "onnx", query_cache_size=0, threads=args.threads
    )
    if not (args.out / "queries.npy").exists():
        queries = []
        for name in ("stdlib-docstrings", "man-pages"):
            _, qs = evalsets.load_set(Path(__file__).parent / "evalsets" / name)
            queries += [q["query"] for q in qs]
        np.save(args.out / "queries.npy", enc.encode(queries).astype(np.float32))
    # Resume from the longest cached prefix; save a prefix every 10,000 passages.
    cached = cached_vectors(args.out, len(texts))
    parts = [] if cached is None else [cached]
    done = 0 if cached is None else len(cached)
    began, first = time.perf_counter(), done
    step = 2000
    for start in range(done, len(texts), step):
        parts.append(enc.encode(texts[start : start + step]).astype(np.float32))
        done = start + len(parts[-1])
        rate = (done - first) / (time.perf_counter() - began)
        print(f"{done}/{len(texts)} {rate:.0f}/s", flush=True)
        if done % 10_000 == 0 or done == len(texts):
            np.save(args.out / f"vectors_{done}.npy", np.concatenate(parts))


if __name__ == "__main__":
    main()
