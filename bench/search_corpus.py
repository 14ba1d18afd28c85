"""Real text passages and their MiniLM vectors for ``bench/search.py`` (cached as .npy).

Passages, in this fixed order, deduplicated, 40-400 characters, more than half letters:

1. the paragraphs of every English man page on this machine (roff stripped by the eval-set
   builder's reader);
2. docstring paragraphs and comment lines of the Python files under the interpreter's library
   folder (the standard library, and the base interpreter's own site-packages inside it);
3. the same from the project environment's site-packages (the installed dependencies);
4. paragraphs and list items of the plain-text files under /usr/share/doc (READMEs, NEWS,
   changelogs; no licence files, HTML or build files), English as the distribution ships it.

Sources 1-2 hold ~380k distinct passages on the bench machine, so 200k rows come from them
alone; 3-4 are read only for longer corpora (1M). The eval sets' documents (man pages and stdlib
docstrings) are among the passages, as they are in a real corpus; their queries (the summary
lines) mostly are not. Encoded with the packaged all-MiniLM-L6-v2 through ONNX Runtime int8
(``OnnxEncoder``; cosine >= 0.99 to the torch vectors, see bench/encode.py) because torch needs
hours for 200k texts on 2 cores. The eval sets' queries are encoded too, so that search can be
timed with real query vectors (not the table's own rows).

``--max-chars`` keeps shorter passages only (e.g. 200: about 35% less encoding time per
passage on man pages; recorded in ``corpus.json``, one value per ``--out`` folder).

Resuming: ``texts.txt`` holds the passages in order and ``vectors_<n>.npy`` the vectors of its
first n (saved every 10,000; an older prefix is deleted unless n is 10k, 20k, 50k or a multiple of
100k); a run encodes from the longest cached prefix. A longer ``--rows``
extends the list only if the sources still yield the cached passages first; otherwise it stops
(the cached vectors would belong to other texts) and says so.

    nice -n 19 python bench/search_corpus.py --rows 200000 --out /work/corpus
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import re
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


def python_passages(root: Path) -> Iterator[str]:
    """Docstring paragraphs and comment lines of the ``.py`` files under ``root`` (sorted)."""
    for path in sorted(root.rglob("*.py")):
        try:
            source = path.read_text(errors="replace")
            tree = ast.parse(source)
        except (SyntaxError, ValueError, OSError, RecursionError):
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


def stdlib_passages() -> Iterator[str]:
    return python_passages(Path(sysconfig.get_paths()["stdlib"]))


def site_packages_passages() -> Iterator[str]:
    """The project environment's dependencies (skipped when it lies under the stdlib folder)."""
    site = Path(sysconfig.get_paths()["purelib"])
    if site.is_relative_to(sysconfig.get_paths()["stdlib"]):
        return iter(())
    return python_passages(site)


_DOC_NAMES = re.compile(
    r"^(readme|news|changelog|changes|todo|bugs|faq|history)|\.(md|rst|txt)$", re.I
)
_ITEM = re.compile(r"^\s*([*+-]|\d+[.)])\s")  # a list item starts a passage of its own
# Changelog bylines and release headers (Debian's and GNU's), not prose.
_HEADER_LINE = re.compile(r"^( -- .*<.*@.*>|\S+ \(.*\) .*; urgency=|\d{4}-\d\d-\d\d .*<.*@.*>)")


def doc_passages(root: Path = Path("/usr/share/doc")) -> Iterator[str]:
    """Paragraphs and list items of the plain-text documentation files under ``root``."""
    for path in sorted(root.rglob("*")):
        name = path.name.removesuffix(".gz")
        if not path.is_file() or path.is_symlink() or not _DOC_NAMES.search(name):
            continue
        try:
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", errors="replace") as f:
                text = f.read(2_000_000)
        except (OSError, EOFError, ValueError):
            continue
        for block in text.split("\n\n"):
            item: list[str] = []
            for line in [*block.splitlines(), "- "]:
                if _HEADER_LINE.match(line):
                    continue
                if _ITEM.match(line) and item:
                    para = " ".join(" ".join(item).split())
                    if _keep(para):
                        yield para
                    item = []
                item.append(_ITEM.sub("", line, count=1))


SOURCES = (man_passages, stdlib_passages, site_packages_passages, doc_passages)


def passages(limit: int, max_chars: int = 400) -> list[str]:
    """The first ``limit`` distinct passages of ``SOURCES`` no longer than ``max_chars``."""
    seen: dict[str, None] = {}
    for source in SOURCES:
        for p in source():
            if len(p) <= max_chars:
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


def drop_stale_prefix(out: Path, rows: int) -> None:
    """Delete ``vectors_<rows>.npy`` once a longer prefix is saved, unless ``rows`` is a
    multiple of 100,000 or one of 10k, 20k, 50k (the sizes the benches read): at 1M rows the
    prefixes saved every 10,000 would otherwise take ~75 GB of disk."""
    if rows > 0 and rows % 100_000 and rows not in (10_000, 20_000, 50_000):
        (out / f"vectors_{rows}.npy").unlink(missing_ok=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/ckbench"))
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    ap.add_argument(
        "--max-chars",
        type=int,
        default=400,
        help="longest passage kept (40-400; shorter passages encode faster)",
    )
    args = ap.parse_args()
    if not 40 <= args.max_chars <= 400:
        sys.exit(f"--max-chars must be within 40-400, got {args.max_chars}")
    from contextkit.embeddings.onnx_encoder import OnnxEncoder

    args.out.mkdir(parents=True, exist_ok=True)
    texts_file, settings_file = args.out / "texts.txt", args.out / "corpus.json"
    settings = {"max_chars": args.max_chars}
    if texts_file.exists():
        stored = json.loads(settings_file.read_text()) if settings_file.exists() else {}
        if stored.get("max_chars", 400) != args.max_chars:
            sys.exit(
                f"{args.out} holds passages of at most {stored.get('max_chars', 400)} characters,"
                f" not {args.max_chars}: use another --out for another --max-chars"
            )
    settings_file.write_text(json.dumps(settings))
    texts = texts_file.read_text().split("\n") if texts_file.exists() else []
    if len(texts) < args.rows:  # the passages come in a fixed order: a longer list extends it
        longer = passages(args.rows, args.max_chars)
        if longer[: len(texts)] != texts and any(args.out.glob("vectors_*.npy")):
            sys.exit(
                f"{texts_file} is not a prefix of the passages this machine yields now (its"
                " files changed), so the cached vectors_*.npy would not match the texts: use"
                " another --out, or delete texts.txt and vectors_*.npy there to start over"
            )
        texts = longer
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
            parts = [np.concatenate(parts)]
            np.save(args.out / f"vectors_{done}.npy", parts[0])
            drop_stale_prefix(args.out, done - 10_000)


if __name__ == "__main__":
    main()
