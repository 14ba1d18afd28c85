"""Chunking: split a document's text into overlapping windows of characters or tokens.

Each :class:`Chunk` keeps its parent key, its index within the document and the character offset
where it starts, so ``text[c.char_offset : c.char_offset + len(c.text)] == c.text`` always holds.
Splitting is deterministic: the same text and options give the same chunks, which is what makes
incremental re-encoding by content hash work.

>>> chunker = Chunker(unit="chars", size=10, overlap=4)
>>> [(c.index, c.char_offset, c.text) for c in chunker.split("red running shoes", ("doc-1",))]
[(0, 0, 'red runnin'), (1, 6, 'nning shoe'), (2, 12, 'shoes')]

Windows are fixed-size (no sentence or word snapping): window ``i`` starts at
``i * (size - overlap)`` units, and the last window is the first one that reaches the end of the
text. With ``unit="tokens"`` the units are the encoder's own tokens when it offers
``token_spans`` (sentence-transformers models do), else whitespace-separated words; a token chunk
spans from its first token's start to its last token's end in the original text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ChunkingError

TokenSpans = Callable[[str], list[tuple[int, int]]]
"""Maps a text to the ``(start, end)`` character span of each token, in order."""

_WORD = re.compile(r"\S+")

# Tokens a sentence-transformers model adds around every input ([CLS] ... [SEP]).
_SPECIAL_TOKENS = 2


def whitespace_spans(text: str) -> list[tuple[int, int]]:
    """Spans of whitespace-separated words: the token fallback when no tokenizer is at hand."""
    return [m.span() for m in _WORD.finditer(text)]


@dataclass(frozen=True)
class Chunk:
    """One window of a document: ``index`` counts from 0 within the parent document."""

    text: str
    index: int
    char_offset: int
    parent_key: tuple = ()


class Chunker:
    """Splits text into windows of ``size`` units overlapping by ``overlap`` units.

    ``unit`` is ``"chars"`` or ``"tokens"``; for tokens, ``token_spans`` tokenizes (default:
    whitespace words). Use :meth:`for_encoder` to chunk with a model's own tokenizer.
    """

    def __init__(
        self,
        *,
        unit: Literal["chars", "tokens"] = "chars",
        size: int = 1000,
        overlap: int = 0,
        token_spans: TokenSpans | None = None,
    ) -> None:
        if unit not in ("chars", "tokens"):
            raise ChunkingError(f"chunk unit must be 'chars' or 'tokens', got {unit!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ChunkingError(f"chunk size must be a positive integer, got {size!r}")
        if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < size:
            raise ChunkingError(
                f"chunk overlap must be an integer in [0, size), got {overlap!r} (size {size})",
                hint="overlap is how many units consecutive chunks share; keep it below size",
            )
        self.unit = unit
        self.size = size
        self.overlap = overlap
        self.token_spans = token_spans or whitespace_spans
        self.tokenizer_name = "whitespace" if token_spans is None else "encoder"
        self.mode = unit  # "auto" when sized by auto()

    def __repr__(self) -> str:
        return f"Chunker(unit={self.unit!r}, size={self.size}, overlap={self.overlap})"

    @classmethod
    def for_encoder(
        cls,
        encoder: Any,
        *,
        unit: Literal["chars", "tokens"] = "tokens",
        size: int = 200,
        overlap: int = 0,
    ) -> Chunker:
        """A chunker that counts the encoder's own tokens when it can tokenize.

        With model tokens, ``size`` must leave room for the model's special tokens within its
        input limit (``encoder.max_tokens``), else :class:`ChunkingError`: the model would
        silently truncate every full chunk.
        """
        spans = getattr(encoder, "token_spans", None) if unit == "tokens" else None
        chunker = cls(unit=unit, size=size, overlap=overlap, token_spans=spans)
        max_tokens = getattr(encoder, "max_tokens", None)
        if spans is not None and max_tokens and size > max_tokens - _SPECIAL_TOKENS:
            raise ChunkingError(
                f"chunks of {size} tokens don't fit {getattr(encoder, 'name', 'the model')}'s "
                f"input limit of {max_tokens} tokens",
                hint=f"use a chunk size of at most {max_tokens - _SPECIAL_TOKENS} tokens",
            )
        return chunker

    @classmethod
    def auto(cls, encoder: Any = None, *, overlap: int | None = None) -> Chunker:
        """Chunks that fill the model's input window: ``max_tokens`` minus its special tokens,
        counted with its own tokenizer, consecutive chunks sharing ``overlap`` tokens (default
        an eighth of the window). Without a tokenizer, whitespace words sized to three quarters
        of the window (a word is ~1.3 model tokens in English); without a known window, 2,000
        characters with 200 of overlap."""
        max_tokens = getattr(encoder, "max_tokens", None) if encoder is not None else None
        spans = getattr(encoder, "token_spans", None) if encoder is not None else None
        if max_tokens and max_tokens > _SPECIAL_TOKENS + 1:
            window = max_tokens - _SPECIAL_TOKENS
            size = window if spans is not None else max(1, window * 3 // 4)
            shared = size // 8 if overlap is None else overlap
            chunker = cls(
                unit="tokens", size=size, overlap=min(shared, size - 1), token_spans=spans
            )
        else:
            shared = 200 if overlap is None else overlap
            chunker = cls(unit="chars", size=2000, overlap=min(shared, 1999))
        chunker.mode = "auto"
        return chunker

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, encoder: Any = None) -> Chunker | None:
        """Build from a view's ``chunking`` option: ``{"by": "tokens", "size": 200,
        "overlap": 20}``. ``None`` (or ``{"by": "none"}``) means one chunk per document;
        ``{"by": "auto"}`` (``overlap`` optional) chunks to the model's window (:meth:`auto`)."""
        if config is None:
            return None
        options = dict(config)
        unit = options.pop("by", options.pop("unit", "chars"))
        if unit == "auto":
            options.pop("size", None)  # the model's window decides
            overlap = options.pop("overlap", None)
            if options:
                raise ChunkingError(
                    f"unknown chunking option(s): {', '.join(sorted(options))}",
                    hint="auto chunking takes only overlap",
                )
            return cls.auto(encoder, overlap=overlap or None)
        size = options.pop("size", 1000 if unit == "chars" else 200)
        overlap = options.pop("overlap", 0)
        if options:
            raise ChunkingError(
                f"unknown chunking option(s): {', '.join(sorted(options))}",
                hint="allowed: by (chars | tokens | none), size, overlap",
            )
        if unit == "none":
            return None
        if encoder is not None:
            return cls.for_encoder(encoder, unit=unit, size=size, overlap=overlap)
        return cls(unit=unit, size=size, overlap=overlap)

    def split(self, text: str | None, parent_key: tuple = ()) -> list[Chunk]:
        """The chunks of ``text``; none for a missing or blank text."""
        if text is None or not text.strip():
            return []
        if self.unit == "chars":
            bounds = _windows(len(text), self.size, self.size - self.overlap)
        else:
            spans = self.token_spans(text)
            bounds = [
                (spans[a][0], spans[b - 1][1])
                for a, b in _windows(len(spans), self.size, self.size - self.overlap)
            ]
        return [
            Chunk(text=text[start:end], index=i, char_offset=start, parent_key=parent_key)
            for i, (start, end) in enumerate(bounds)
        ]


def whole_text(text: str | None, parent_key: tuple = ()) -> list[Chunk]:
    """No chunking: the whole text as chunk 0 (none for a missing or blank text)."""
    if text is None or not text.strip():
        return []
    return [Chunk(text=text, index=0, char_offset=0, parent_key=parent_key)]


def _windows(n: int, size: int, step: int) -> list[tuple[int, int]]:
    out = []
    start = 0
    while start < n:
        end = min(start + size, n)
        out.append((start, end))
        if end == n:
            break
        start += step
    return out
