"""Chunking: character and token windows, overlaps, offsets and edge cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contextkit.embeddings import Chunker, ChunkingError, HashEncoder, whole_text


def spans(chunks):
    return [(c.index, c.char_offset, c.text) for c in chunks]


def test_character_windows_overlap_by_the_given_amount():
    text = "abcdefghijklmnopqrstuvwxyz"
    chunks = Chunker(unit="chars", size=10, overlap=3).split(text, ("doc-1",))
    assert spans(chunks) == [
        (0, 0, "abcdefghij"),
        (1, 7, "hijklmnopq"),
        (2, 14, "opqrstuvwx"),
        (3, 21, "vwxyz"),
    ]
    assert all(c.parent_key == ("doc-1",) for c in chunks)


def test_the_last_window_is_the_first_that_reaches_the_end():
    # 20 chars, size 10, step 5: windows at 0, 5, 10; a window at 15 would sit inside the one at 10
    chunks = Chunker(unit="chars", size=10, overlap=5).split("x" * 20)
    assert [(c.char_offset, len(c.text)) for c in chunks] == [(0, 10), (5, 10), (10, 10)]


def test_text_shorter_than_a_chunk_is_one_chunk():
    assert spans(Chunker(size=100, overlap=10).split("short text")) == [(0, 0, "short text")]


@pytest.mark.parametrize("text", [None, "", "   \n\t  "])
def test_missing_or_blank_text_has_no_chunks(text):
    assert Chunker(size=5).split(text) == []
    assert Chunker(unit="tokens", size=5).split(text) == []
    assert whole_text(text) == []


def test_whole_text_is_chunk_zero():
    [chunk] = whole_text("the whole document", ("a", 1))
    assert (chunk.index, chunk.char_offset, chunk.text, chunk.parent_key) == (
        0,
        0,
        "the whole document",
        ("a", 1),
    )


def test_word_tokens_keep_the_original_spacing():
    text = "one  two\nthree four   five six seven"
    chunks = Chunker(unit="tokens", size=3, overlap=1).split(text)
    assert spans(chunks) == [
        (0, 0, "one  two\nthree"),
        (1, 9, "three four   five"),
        (2, 22, "five six seven"),
    ]


def test_encoder_tokens_are_used_when_the_encoder_can_tokenize():
    class CharTokens(HashEncoder):  # a "model" whose tokens are single characters
        max_tokens = 12

        def token_spans(self, text):
            return [(i, i + 1) for i, ch in enumerate(text) if not ch.isspace()]

    chunker = Chunker.for_encoder(CharTokens(), size=4, overlap=1)
    assert spans(chunker.split("ab cd ef")) == [(0, 0, "ab cd"), (1, 4, "d ef")]
    with pytest.raises(ChunkingError, match="at most 10 tokens"):
        Chunker.for_encoder(CharTokens(), size=11)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"size": 0}, "positive integer"),
        ({"size": 10, "overlap": 10}, "overlap"),
        ({"size": 10, "overlap": -1}, "overlap"),
        ({"unit": "lines"}, "'chars' or 'tokens'"),
        ({"size": True}, "positive integer"),
    ],
)
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ChunkingError, match=message):
        Chunker(**options)


def test_from_config():
    assert Chunker.from_config(None) is None
    assert Chunker.from_config({"by": "none"}) is None
    chunker = Chunker.from_config({"by": "tokens", "size": 50, "overlap": 5})
    assert (chunker.unit, chunker.size, chunker.overlap) == ("tokens", 50, 5)
    with pytest.raises(ChunkingError, match="unknown chunking option"):
        Chunker.from_config({"by": "chars", "stride": 3})


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from("ab c\n\t"), max_size=80),
    size=st.integers(1, 12),
    data=st.data(),
    unit=st.sampled_from(["chars", "tokens"]),
)
def test_chunks_reconstruct_and_cover_the_text(text, size, data, unit):
    overlap = data.draw(st.integers(0, size - 1))
    chunker = Chunker(unit=unit, size=size, overlap=overlap)
    chunks = chunker.split(text)
    assert chunks == chunker.split(text)  # deterministic
    assert [c.index for c in chunks] == list(range(len(chunks)))
    covered = set()
    for c in chunks:
        assert text[c.char_offset : c.char_offset + len(c.text)] == c.text
        covered.update(range(c.char_offset, c.char_offset + len(c.text)))
    # every non-space character is in some chunk
    assert {i for i, ch in enumerate(text) if not ch.isspace()} <= covered
    if unit == "chars" and text.strip():
        for a, b in zip(chunks, chunks[1:], strict=False):
            assert len(a.text) == size
            assert a.char_offset + size - b.char_offset == overlap
        assert chunks[-1].char_offset + len(chunks[-1].text) == len(text)
