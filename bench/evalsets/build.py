"""Build the labelled retrieval eval sets from real text found offline on this machine.

Two sets, each a folder of two JSONL files (one record a line, UTF-8, keys in a fixed order):

- ``documents.jsonl``: ``{"id": "...", "text": "..."}``
- ``queries.jsonl``: ``{"query": "...", "relevant_ids": ["..."]}``

``stdlib-docstrings``
    Python standard-library docstrings, read from the ``.py`` sources with :mod:`ast` (nothing is
    imported, so no module runs). The summary line is the query, the rest of the docstring the
    document (PEP 257: a summary line, a blank line, then the body).
``man-pages``
    The English man pages under ``/usr/share/man/man[1-8]``. The NAME line's description is the
    query (``ls \\- list directory contents`` -> ``list directory contents``), the DESCRIPTION
    section, stripped of roff markup, the document.

Every query has exactly one relevant document and every document one query. Ambiguous pairs are
dropped: a query text or a document text that occurs more than once (overloads, aliases, generated
pages). Short or boilerplate records are filtered out (see ``_keep_pair``). Big families of
near-identical generated pages (16,000 ``gcloud`` pages on some machines) are capped per family so
that no single tool dominates a set. The selection is deterministic: sources are read in sorted
order and records are sampled and ordered by a hash of their id, so any prefix of a file is a
uniform sample and the same machine always yields the same bytes. Different machines (another
Python patch release, other installed packages) yield different sets, which is why the generated
files are shipped next to this script; ``manifest.json`` records where they came from.

Documents are capped at ``--max-chars`` characters (cut at a word boundary): the packaged MiniLM
model reads only its first 256 tokens (about 1,000 characters) anyway, and the cap keeps the
shipped files small.

Run ``python bench/evalsets/build.py`` to regenerate the shipped sets (``--help`` for options).
Only the standard library is used, so the builder runs without the project installed.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import inspect
import json
import platform
import re
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETS = ("stdlib-docstrings", "man-pages")
DEFAULT_MAX_DOCS = 2000
DEFAULT_MAX_CHARS = 1500
DEFAULT_PER_FAMILY = 40
MAN_ROOT = Path("/usr/share/man")

# Standard-library folders whose docstrings are tests, demos, GUI or vendored code.
_SKIP_STDLIB_DIRS = {
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "ensurepip",
    "venv",
}
_MIN_QUERY_WORDS = 3
_MAX_QUERY_CHARS = 200
_MIN_DOC_CHARS = 120
_MIN_DOC_WORDS = 20


@dataclass(frozen=True)
class Pair:
    """One labelled pair: the query and the text of its one relevant document."""

    id: str
    query: str
    text: str


# -- the standard library ------------------------------------------------------------------------


def stdlib_pairs(root: Path | None = None) -> Iterator[Pair]:
    """Summary line -> rest of the docstring, for each public module, class and function."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_STDLIB_DIRS for part in rel.parts[:-1]):
            continue
        module = ".".join(rel.with_suffix("").parts)
        module = module.removesuffix(".__init__")
        if any(part.startswith("_") for part in module.split(".")):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue
        for qualname, docstring in _docstrings(tree, module):
            pair = _split_docstring(f"stdlib:{qualname}", docstring)
            if pair is not None:
                yield pair


def _docstrings(tree: ast.Module, module: str) -> Iterator[tuple[str, str]]:
    doc = ast.get_docstring(tree, clean=False)
    if doc:
        yield module, doc
    stack: list[tuple[str, ast.AST]] = [(module, tree)]
    while stack:
        prefix, node = stack.pop(0)
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if child.name.startswith("_"):
                continue
            qualname = f"{prefix}.{child.name}"
            doc = ast.get_docstring(child, clean=False)
            if doc:
                yield qualname, doc
            if isinstance(child, ast.ClassDef):
                stack.append((qualname, child))


def _split_docstring(pair_id: str, docstring: str) -> Pair | None:
    lines = inspect.cleandoc(docstring).splitlines()
    # PEP 257: a one-line summary, then a blank line, then the body.
    if len(lines) < 3 or lines[1].strip():
        return None
    query = lines[0].strip()
    body = "\n".join(lines[2:]).strip()
    return Pair(pair_id, query, body)


# -- man pages -----------------------------------------------------------------------------------

_SECTION = re.compile(r'^\.S[Hh]\s+"?([^"]*)"?\s*$')
_NAME_SPLIT = re.compile(r"\s+(?:\\-|-|\\\(em|\\\(en)\s+")
_FONT = re.compile(r"\\f(?:\[[^\]]*\]|\([A-Za-z0-9]{2}|[A-Za-z0-9])")
_COLOR = re.compile(r"\\[mM](?:\[[^\]]*\]|\(..|.)")
_SIZE = re.compile(r"\\s[+-]?\d+")
_NAMED_CHAR = re.compile(
    r"\\(?:\(([A-Za-z0-9]{2})|\[([A-Za-z0-9_]+)\]|\*(?:\(([A-Za-z]{2})|([A-Za-z])))"
)
_ESCAPE = re.compile(r"\\(.)")
_CHARS = {
    "em": "-",
    "en": "-",
    "hy": "-",
    "mi": "-",
    "aq": "'",
    "dq": '"',
    "lq": '"',
    "rq": '"',
    "oq": "'",
    "cq": "'",
    "bu": "*",
    "co": "(c)",
    "rg": "(R)",
    "tm": "(TM)",
    "R": "(R)",
    "Tm": "(TM)",
    "ti": "~",
    "ha": "^",
    "ga": "`",
    "bv": "|",
    "ba": "|",
    "rs": "\\",
    "sl": "/",
    "mu": "x",
    "de": " degrees",
    "<=": "<=",
    ">=": ">=",
    "->": "->",
    "<-": "<-",
}
_SIMPLE_ESCAPES = {
    "-": "-",
    "e": "\\",
    "\\": "\\",
    " ": " ",
    "~": " ",
    "0": " ",
    "'": "'",
    "`": "`",
}
# Macros whose arguments are running text (font changes, tagged paragraphs).
_TEXT_MACROS = {"B", "I", "SM", "SB", "UR", "MT", "Nm", "Nd", "Ar"}
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
_PARAGRAPH = {"PP", "P", "LP", "IP", "TP", "HP", "sp", "br", "TQ", "Pp"}


def man_pages(root: Path = MAN_ROOT) -> list[Path]:
    """The page files under ``root/man1`` .. ``root/man8`` (English only), sorted, each once."""
    seen: set[Path] = set()
    pages = []
    for section in range(1, 9):
        folder = root / f"man{section}"
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_symlink() or not path.is_file():
                continue  # aliases point at a page that is read under its own name
            real = path.resolve()
            if real not in seen:
                seen.add(real)
                pages.append(path)
    return pages


def man_pairs(root: Path = MAN_ROOT, *, per_family: int = DEFAULT_PER_FAMILY) -> Iterator[Pair]:
    """NAME description -> DESCRIPTION text for each man page, at most ``per_family`` pages
    (chosen by hash) per tool family (``gcloud_...``, ``git-...``, ``llvm-...``)."""
    by_family: dict[str, list[Path]] = {}
    for path in man_pages(root):
        by_family.setdefault(_family(path.name), []).append(path)
    chosen = []
    for _family_name, paths in sorted(by_family.items()):
        chosen.extend(sorted(paths, key=lambda p: _digest(p.name))[:per_family])
    for path in sorted(chosen):
        pair = _man_pair(path)
        if pair is not None:
            yield pair


def _family(filename: str) -> str:
    return re.split(r"[-_.:]", filename.lower(), maxsplit=1)[0] or filename


def _man_pair(path: Path) -> Pair | None:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    source = raw.decode("utf-8", errors="replace")
    sections = _man_sections(source.splitlines())
    name = sections.get("NAME")
    description = sections.get("DESCRIPTION")
    if not name or not description:
        return None
    parts = _NAME_SPLIT.split(" ".join(name), maxsplit=1)
    if len(parts) != 2:
        return None
    query = _roff_text([parts[1]])
    text = _roff_text(description)
    page = path.name.removesuffix(".gz")
    return Pair(f"man:{page}", query, text)


def _man_sections(lines: list[str]) -> dict[str, list[str]]:
    """The raw lines of each ``.SH`` section, by upper-cased title (the first of each title)."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        match = _SECTION.match(line)
        if match:
            title = match.group(1).strip().upper()
            current = None if title in sections else sections.setdefault(title, [])
        elif current is not None:
            current.append(line)
    return sections


def _roff_text(lines: Iterable[str]) -> str:
    """Plain text from man(7) source: macros dropped or unwrapped, escapes resolved."""
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line.startswith(('.\\"', "'\\\"", '.\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            macro, _, args = line[1:].strip().partition(" ")
            if macro in _PARAGRAPH:
                paragraphs.append([])
            if macro in _ALTERNATING:
                line = "".join(_macro_args(args))
            elif macro == "IP":  # .IP tag indent: the tag is text, the indent is not
                line = " ".join(_macro_args(args)[:1])
            elif macro in _TEXT_MACROS:
                line = " ".join(_macro_args(args))
            else:
                continue
        paragraphs[-1].append(_inline(line))
    text = "\n\n".join(" ".join(w for w in " ".join(p).split()) for p in paragraphs)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _macro_args(args: str) -> list[str]:
    return [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', args)]


def _inline(text: str) -> str:
    text = _FONT.sub("", text)
    text = _COLOR.sub("", text)
    text = _SIZE.sub("", text)
    text = _NAMED_CHAR.sub(lambda m: _CHARS.get(next(g for g in m.groups() if g), ""), text)
    text = re.sub(r"\\[&|^%)c]", "", text)
    return _ESCAPE.sub(lambda m: _SIMPLE_ESCAPES.get(m.group(1), ""), text)


# -- filtering, sampling, writing ----------------------------------------------------------------

_BOILERPLATE = re.compile(
    r"^(?:see |same as |alias |deprecated|this (?:page|manual page) |documentation for |"
    r"the \w+ (?:module|class)\.?$|\w+ (?:class|object)\.?$)",
    re.IGNORECASE,
)


def _keep_pair(pair: Pair) -> bool:
    query, text = pair.query, pair.text
    if len(query.split()) < _MIN_QUERY_WORDS or len(query) > _MAX_QUERY_CHARS:
        return False
    if _BOILERPLATE.match(query) or _BOILERPLATE.match(text):
        return False
    if len(text) < _MIN_DOC_CHARS or len(text.split()) < _MIN_DOC_WORDS:
        return False
    # Mostly code or tables (doctests, option lists of symbols) is not prose a person would search.
    letters = sum(ch.isalpha() for ch in text)
    return letters >= 0.6 * len(text.replace(" ", "").replace("\n", ""))


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _cap(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars + 1)
    return text[: cut if cut > max_chars // 2 else max_chars].rstrip()


def select_pairs(pairs: Iterable[Pair], *, max_docs: int, max_chars: int) -> list[Pair]:
    """Filter, drop ambiguous pairs (a repeated query or document), cap texts, then keep the
    ``max_docs`` pairs whose id hashes lowest, in hash order (so any prefix is a sample)."""
    kept = [p for p in pairs if _keep_pair(p)]
    query_counts = Counter(_norm(p.query) for p in kept)
    text_counts = Counter(_norm(p.text) for p in kept)
    seen_ids: set[str] = set()
    unique = []
    for p in kept:
        if query_counts[_norm(p.query)] > 1 or text_counts[_norm(p.text)] > 1 or p.id in seen_ids:
            continue
        seen_ids.add(p.id)
        unique.append(Pair(p.id, p.query, _cap(p.text, max_chars)))
    unique.sort(key=lambda p: _digest(p.id))
    return unique[:max_docs]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def write_set(pairs: list[Pair], folder: Path) -> dict[str, int]:
    """Write ``documents.jsonl`` and ``queries.jsonl`` into ``folder``; returns their counts."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "documents.jsonl").open("w", encoding="utf-8", newline="\n") as docs:
        for p in pairs:
            docs.write(json.dumps({"id": p.id, "text": p.text}, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8", newline="\n") as queries:
        for p in pairs:
            record = {"query": p.query, "relevant_ids": [p.id]}
            queries.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {"documents": len(pairs), "queries": len(pairs)}


def load_set(folder: str | Path, limit: int | None = None) -> tuple[list[dict], list[dict]]:
    """Read a set's documents and queries. With ``limit``, the first ``limit`` documents and the
    queries whose relevant documents are all among them."""
    folder = Path(folder)
    docs = _read_jsonl(folder / "documents.jsonl")
    queries = _read_jsonl(folder / "queries.jsonl")
    if limit is not None:
        docs = docs[:limit]
        ids = {d["id"] for d in docs}
        queries = [q for q in queries if set(q["relevant_ids"]) <= ids]
    return docs, queries


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build(
    out: Path = HERE,
    *,
    sets: Iterable[str] = SETS,
    max_docs: int = DEFAULT_MAX_DOCS,
    max_chars: int = DEFAULT_MAX_CHARS,
    per_family: int = DEFAULT_PER_FAMILY,
    stdlib_root: Path | None = None,
    man_root: Path = MAN_ROOT,
) -> dict[str, dict]:
    """Build the named sets under ``out/<set>/``; returns the manifest (also written to
    ``out/manifest.json``). A set whose source is missing (no man pages) is skipped."""
    manifest: dict[str, dict] = {}
    for name in sets:
        if name == "stdlib-docstrings":
            root = Path(stdlib_root or sysconfig.get_paths()["stdlib"])
            source = f"Python {platform.python_version()} standard library ({root})"
            pairs = stdlib_pairs(root)
        elif name == "man-pages":
            if not any((man_root / f"man{s}").is_dir() for s in range(1, 9)):
                print(f"skipping {name}: no man pages under {man_root}", file=sys.stderr)
                continue
            source = f"man pages under {man_root}/man[1-8], at most {per_family} per family"
            pairs = man_pairs(man_root, per_family=per_family)
        else:
            raise ValueError(f"unknown eval set {name!r} (known: {', '.join(SETS)})")
        chosen = select_pairs(pairs, max_docs=max_docs, max_chars=max_chars)
        counts = write_set(chosen, out / name)
        manifest[name] = {"source": source, "max_chars": max_chars, **counts}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: here)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated set names")
    parser.add_argument("--max-docs", type=int, default=DEFAULT_MAX_DOCS)
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS)
    parser.add_argument("--per-family", type=int, default=DEFAULT_PER_FAMILY)
    args = parser.parse_args(argv)
    manifest = build(
        args.out,
        sets=[s for s in args.sets.split(",") if s],
        max_docs=args.max_docs,
        max_chars=args.max_chars,
        per_family=args.per_family,
    )
    for name, info in manifest.items():
        print(f"{name}: {info['documents']} documents, {info['queries']} queries -> {args.out}")


if __name__ == "__main__":
    main()
