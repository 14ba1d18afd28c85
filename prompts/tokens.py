"""Token counting and fitting a rendered prompt into a token budget.

>>> from contextkit.prompts.tokens import count_tokens, fit_to_budget, get_token_counter
>>> count_tokens("Hello world")                     # no model: the offline approximation
2
>>> get_token_counter(None).method
'approximate'
>>> docs = [{"id": "a", "text": "alpha " * 50, "score": 0.9},
...         {"id": "b", "text": "beta " * 50, "score": 0.1}]
>>> fit = fit_to_budget(lambda kept: "\\n".join(d["text"] for d in kept), docs, max_tokens=60)
>>> fit.dropped, fit.truncated, fit.tokens          # "b" scored lower, so it went first
(['b'], False, 50)

How tokens are counted (``get_token_counter(model).method`` says which was used):

- ``"tiktoken:<encoding>"``: exact, litellm's own counts, for models whose tiktoken encoding
  litellm bundles (``cl100k_base``, ``o200k_base``, ``p50k_base``): every OpenAI chat model, and
  litellm's default for unknown models (``openai/stub-model`` counts as cl100k). An OpenAI model
  in litellm's bundled model list that tiktoken knows (``gpt-4o``, ``gpt-4.1``, ``o3``,
  ``gpt-4``, ``gpt-3.5-turbo``...) is counted with tiktoken directly over the same bundled files,
  the way ``litellm.token_counter`` counts, without importing litellm (seconds on a process's
  first prompt); other models go through ``litellm.token_counter``.
- ``"huggingface:anthropic"``: exact, litellm's bundled Anthropic tokenizer (old Claude models).
- ``"approximate"``: no model given, litellm not installed, or litellm would have to download a
  tokenizer (Llama 2/3, Cohere command-r on the Hugging Face Hub; r50k/gpt2 encodings). Counting
  never touches the network. The estimate splits text into words, numbers, punctuation and
  whitespace runs: an ASCII word costs ceil(len/6), a digit run ceil(len/3), a CJK character 1,
  other non-ASCII letters ceil(len/2.5), punctuation 1, emoji 2. Against cl100k/o200k it lands
  within about -10%..+45% (prose ~+20%, code and URLs ~+45%, German/Russian ~-10%..+70%): it
  errs high, which is the safe side for a budget.
- Chat messages cost their contents plus 3 tokens per message and 3 to prime the reply
  (OpenAI's accounting, also litellm's).

A provider prefix is ignored when picking the tokenizer (``openai/gpt-4o`` counts like
``gpt-4o``, o200k), unlike ``litellm.token_counter`` itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

Messages = Sequence[Mapping[str, Any]]
TextOrMessages = str | Messages

# Per OpenAI's chat accounting (and litellm's): every message is wrapped in ~3 tokens, and the
# reply is primed with 3 more.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3

# litellm tokenizers that would be fetched from the Hugging Face Hub (litellm.utils
# huggingface_tokenizer_kind); everything else is tiktoken or bundled.
_HUB_TOKENIZER_KINDS = {"cohere", "llama2", "llama3"}

# tiktoken encodings whose BPE file is shared with another one (o200k_harmony reads o200k_base).
_ENCODING_FILE = {"o200k_harmony": "o200k_base", "p50k_edit": "p50k_base"}


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens for one model. Get one with :func:`get_token_counter` (cached per model).

    ``method`` names the tokenizer used (see the module docstring); ``exact`` is False for the
    approximation, and ``reason`` then says why no exact tokenizer was used.
    """

    model: str | None
    method: str
    exact: bool
    reason: str = ""
    _count_text: Callable[[str], int] = field(repr=False, default=lambda text: 0)
    _count_messages: Callable[[list[dict[str, Any]]], int] | None = field(repr=False, default=None)

    def count(self, text_or_messages: TextOrMessages) -> int:
        """Tokens in a string, or in a list of ``{"role", "content"}`` chat messages."""
        if isinstance(text_or_messages, str):
            return self._count_text(text_or_messages) if text_or_messages else 0
        messages = [dict(message) for message in text_or_messages]
        if not messages:
            return 0
        if self._count_messages is not None:
            return self._count_messages(messages)
        total = TOKENS_REPLY_PRIMING
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key in ("role", "content", "name"):
                value = message.get(key)
                if isinstance(value, str):
                    total += self._count_text(value)
        return total

    def truncate(self, text: str, max_tokens: int, end: str = "") -> str:
        """The longest prefix of ``text`` that, with ``end`` appended, fits in ``max_tokens``.

        Returns ``text`` unchanged when it already fits; ``""`` when not even ``end`` fits.
        Cuts fall on character boundaries; trailing whitespace of the prefix is dropped.
        """
        if max_tokens <= 0:
            return ""
        if self.count(text) <= max_tokens:
            return text
        if self.count(end) > max_tokens:
            end = ""
        # Binary search on the prefix length; `lo` always fits.
        lo, hi = 0, len(text)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count(text[:mid].rstrip() + end) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        prefix = text[:lo].rstrip()
        return prefix + end if prefix else ""


@lru_cache(maxsize=64)
def get_token_counter(model: str | None = None) -> TokenCounter:
    """The :class:`TokenCounter` for ``model`` (None: the approximation). Never uses the network."""
    if not model:
        return _approximate(None, "no model given")
    from .llm import ECHO_MODEL

    if model == ECHO_MODEL:  # answered locally: importing litellm (seconds) would buy nothing
        return _approximate(model, "the built-in echo model has no tokenizer")
    bare = model.rsplit("/", 1)[-1]
    direct = _direct_openai_counter(model, bare)
    if direct is not None:  # an OpenAI model: tiktoken alone, without importing litellm (seconds)
        return direct
    try:
        from ._litellm import load_litellm

        litellm = load_litellm()
    except ImportError:
        return _approximate(model, "litellm is not installed (pip install 'contextkit[llm]')")
    try:
        return _litellm_counter(litellm, model, bare)
    except _NeedsDownload as why:
        return _approximate(model, str(why))
    except (ImportError, AttributeError) as error:  # litellm internals moved: stay offline
        return _approximate(model, f"could not resolve litellm's tokenizer offline ({error})")


def count_tokens(text_or_messages: TextOrMessages, model: str | None = None) -> int:
    """Tokens in a string or a list of chat messages, for ``model`` (see the module docstring)."""
    return get_token_counter(model).count(text_or_messages)


@dataclass(frozen=True)
class BudgetFit:
    """What :func:`fit_to_budget` produced.

    - ``rendered``: the final text or messages (what ``render_fn`` returned, maybe truncated);
    - ``kept``: the documents that were rendered, in their original order;
    - ``dropped``: ids of the documents left out, in the order they were dropped (lowest score
      first); a document without ``id`` is reported by its index in ``documents``;
    - ``truncated``: True when the text had to be cut after dropping every document;
    - ``tokens``: the token count of ``rendered``;
    - ``tokenizer``: ``TokenCounter.method`` of the counter used.
    """

    rendered: str | list[dict[str, Any]]
    kept: list[Mapping[str, Any]]
    dropped: list[Any]
    truncated: bool
    tokens: int
    tokenizer: str


def fit_to_budget(
    render_fn: Callable[[list[Mapping[str, Any]]], str | Messages],
    documents: Sequence[Mapping[str, Any]],
    max_tokens: int,
    model: str | None = None,
    *,
    id_key: str = "id",
    score_key: str = "score",
) -> BudgetFit:
    """Render with as many documents as fit in ``max_tokens``; drop the lowest-scored first.

    ``render_fn(kept_documents)`` returns text or chat messages; it is called again each time
    the set of documents changes, with the kept documents in their original order. Documents
    are dropped in ascending ``score`` (a missing or None score counts as lowest; among equal
    scores the later document goes first). If the prompt is still over budget with no documents
    at all, the text is truncated (for messages: the longest message content is cut, then the
    next longest, ...). Assumes fewer documents never render longer, which holds for templates
    that loop over their documents.

    >>> fit = fit_to_budget(lambda docs: " ".join(d["text"] for d in docs),
    ...                     [{"id": 1, "text": "short", "score": 2.0}], max_tokens=100)
    >>> fit.rendered, fit.dropped, fit.truncated
    ('short', [], False)
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    counter = get_token_counter(model)
    docs = list(documents)
    # Drop order: lowest score first; ties broken by later position first.
    drop_order = sorted(range(len(docs)), key=lambda i: (_score(docs[i].get(score_key)), -i))

    def attempt(n_dropped: int) -> tuple[str | list[dict[str, Any]], int, list[Mapping[str, Any]]]:
        gone = set(drop_order[:n_dropped])
        kept = [doc for i, doc in enumerate(docs) if i not in gone]
        rendered = _as_output(render_fn(kept))
        return rendered, counter.count(rendered), kept

    rendered, tokens, kept = attempt(0)
    n_dropped = 0
    if tokens > max_tokens and docs:
        # Smallest number of drops that fits, by binary search (one render per step); if even
        # dropping all of them does not fit, all are dropped and the text is truncated below.
        best = None
        lo, hi = 1, len(docs)
        while lo < hi:
            mid = (lo + hi) // 2
            trial = attempt(mid)
            if trial[1] <= max_tokens:
                hi, best = mid, trial
            else:
                lo = mid + 1
        n_dropped = hi
        rendered, tokens, kept = best if best is not None else attempt(hi)
    dropped = [docs[i].get(id_key, i) for i in drop_order[:n_dropped]]
    truncated = False
    if tokens > max_tokens:
        rendered = _truncate_output(counter, rendered, max_tokens)
        tokens = counter.count(rendered)
        truncated = True
    return BudgetFit(rendered, kept, dropped, truncated, tokens, counter.method)


# -- internals ---------------------------------------------------------------------------------


class _NeedsDownload(Exception):
    pass


def _score(value: Any) -> float:
    if value is None:
        return -math.inf
    try:
        return float(value)
    except (TypeError, ValueError):
        return -math.inf


def _as_output(value: str | Messages) -> str | list[dict[str, Any]]:
    if isinstance(value, str):
        return value
    return [dict(message) for message in value]


def _truncate_output(
    counter: TokenCounter, rendered: str | list[dict[str, Any]], max_tokens: int
) -> str | list[dict[str, Any]]:
    if isinstance(rendered, str):
        return counter.truncate(rendered, max_tokens)
    messages = [dict(message) for message in rendered]
    # Cut the longest contents first: that is where retrieved context lives, not in the question.
    by_size = sorted(
        (i for i, m in enumerate(messages) if isinstance(m.get("content"), str)),
        key=lambda i: -counter.count(messages[i]["content"]),
    )
    for i in by_size:
        over = counter.count(messages) - max_tokens
        if over <= 0:
            break
        content = messages[i]["content"]
        keep = max(counter.count(content) - over, 0)
        messages[i]["content"] = counter.truncate(content, keep)
        # Token counts of a prefix are not exactly additive: shave until the whole fits.
        while counter.count(messages) > max_tokens and messages[i]["content"]:
            keep -= 1
            messages[i]["content"] = counter.truncate(content, keep)
    return messages


_PIECE = re.compile(r"[^\W\d_]+|\d+|\s+|[^\w\s]|_")


def approximate_token_count(text: str) -> int:
    """The offline estimate described in the module docstring (no tokenizer needed)."""
    total = 0
    after_space = False
    for match in _PIECE.finditer(text):
        piece = match.group()
        first = piece[0]
        if first.isspace():
            # A single space is usually merged into the next word's token.
            total += 0 if piece == " " else math.ceil(len(piece) / 4)
            after_space = piece == " "
            continue
        if first.isdigit():
            total += math.ceil(len(piece) / 3) + after_space
        elif first.isalpha():
            if piece.isascii():
                total += math.ceil(len(piece) / 6)
            else:
                wide = sum(1 for ch in piece if ord(ch) >= 0x2E80)  # CJK and friends
                total += wide + math.ceil((len(piece) - wide) / 2.5)
        else:  # punctuation and symbols; emoji and other astral symbols cost about two
            total += 2 if ord(first) >= 0x2E80 else 1
        after_space = False
    return total


def _approximate(model: str | None, reason: str) -> TokenCounter:
    return TokenCounter(model, "approximate", False, reason, approximate_token_count)


def _litellm_counter(litellm: Any, model: str, bare: str) -> TokenCounter:
    from litellm.litellm_core_utils.token_counter import openai_tokenizer_encoding_name
    from litellm.utils import huggingface_tokenizer_kind

    kind = huggingface_tokenizer_kind(bare)
    if kind in _HUB_TOKENIZER_KINDS:
        raise _NeedsDownload(
            f"litellm would download the {kind} tokenizer from the Hugging Face Hub"
        )
    if kind is not None:
        method = f"huggingface:{kind}"
    else:
        encoding = openai_tokenizer_encoding_name(bare)
        if not _tiktoken_file_available(encoding):
            raise _NeedsDownload(f"the tiktoken encoding {encoding} is not bundled or cached")
        method = f"tiktoken:{encoding}"

    exact = _count_function(bare)

    def count_text(text: str) -> int:
        if exact is not None and not getattr(litellm, "disable_token_counter", False):
            return int(exact(text))
        return int(litellm.token_counter(model=bare, text=text))

    def count_messages(messages: list[dict[str, Any]]) -> int:
        return int(litellm.token_counter(model=bare, messages=messages))

    return TokenCounter(model, method, True, "", count_text, count_messages)


def _count_function(bare: str) -> Callable[[str], int] | None:
    """The function ``litellm.token_counter(model=bare, text=...)`` counts with, resolved once:
    the same counts without resolving the model's tokenizer on every call (a prompt's budget
    counts tens of texts per render; 1,000 dataset rows went from ~0.34 to ~0.13 ms a count).
    None when litellm's internals moved (then every count goes through ``token_counter``)."""
    try:
        from litellm.litellm_core_utils.token_counter import _get_count_function

        return _get_count_function(bare)
    except (ImportError, AttributeError, TypeError, ValueError, KeyError):
        return None


def _tiktoken_file_available(encoding: str) -> bool:
    """Whether tiktoken can load ``encoding`` without a download (litellm points tiktoken's
    cache at the BPE files it bundles, unless CUSTOM_TIKTOKEN_CACHE_DIR says otherwise)."""
    folder = _tiktoken_cache_folder()
    return folder is not None and (folder / _tiktoken_cache_key(encoding)).is_file()


def _tiktoken_cache_key(encoding: str) -> str:
    name = _ENCODING_FILE.get(encoding, encoding)
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    return hashlib.sha1(url.encode()).hexdigest()


def _tiktoken_cache_folder() -> Path | None:
    """The folder litellm points TIKTOKEN_CACHE_DIR at when it is imported (its bundled BPE files,
    or CUSTOM_TIKTOKEN_CACHE_DIR), found without importing litellm; None without litellm."""
    custom = os.environ.get("CUSTOM_TIKTOKEN_CACHE_DIR")
    if custom:
        return Path(custom)
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"


# -- OpenAI models without litellm -------------------------------------------------------------
#
# Importing litellm takes seconds, and the first prompt of a process paid them only to count
# tokens. For an OpenAI model listed in litellm's bundled model list, litellm.token_counter is
# tiktoken with the model's encoding over the same bundled BPE files, so it is counted here with
# tiktoken directly, the way litellm 1.110 counts (checked against its source, and tested
# against litellm.token_counter): the text is encoded in 1,024-character chunks (the chunk
# boundaries can shift a count by a token, so they are kept), special tokens count as text, and
# texts over 4,000,000 characters are extrapolated from 16 evenly spaced samples. Every other
# model, or litellm's chunk knobs set in the environment, goes through litellm.

_CHUNK_CHARS = 1024  # litellm's TIKTOKEN_ENCODE_CHUNK_SIZE_CHARS default
_MAX_EXACT_CHARS = 4_000_000  # litellm's TOKEN_COUNTER_MAX_EXACT_CHARS default
_EXTRAPOLATION_SAMPLES = 16
_LITELLM_COUNT_KNOBS = ("TIKTOKEN_ENCODE_CHUNK_SIZE_CHARS", "TOKEN_COUNTER_MAX_EXACT_CHARS")
# Names litellm counts with a Hugging Face tokenizer or special message accounting.
_NOT_DIRECT = re.compile(r"llama|replicate|deepseek|^ft:|:|^gpt-3\.5-turbo-0301$", re.IGNORECASE)
_CALL_KEYS = ("tool_calls", "function_call")
_tiktoken_env_lock = threading.Lock()


def _direct_openai_counter(model: str, bare: str) -> TokenCounter | None:
    """A counter for ``model`` on tiktoken alone, or None when litellm must count it."""
    if _NOT_DIRECT.search(bare) or any(os.environ.get(knob) for knob in _LITELLM_COUNT_KNOBS):
        return None
    from ._litellm import model_cost

    listed = (model_cost() or {}).get(bare)
    # litellm.open_ai_chat_completion_models: the model list's keys whose provider is "openai".
    if not isinstance(listed, Mapping) or listed.get("litellm_provider") != "openai":
        return None
    try:
        import tiktoken

        encoding_name = "o200k_base" if "gpt-4o" in bare else tiktoken.encoding_name_for_model(bare)
    except (ImportError, KeyError):  # a name tiktoken does not know: litellm's own fallbacks
        return None
    if not _tiktoken_file_available(encoding_name):
        return None
    encoding = _load_encoding(encoding_name)

    def count_exactly(text: str) -> int:
        return sum(
            len(encoding.encode(text[start : start + _CHUNK_CHARS], disallowed_special=()))
            for start in range(0, len(text), _CHUNK_CHARS)
        )

    def count_text(text: str) -> int:
        if _litellm_counting_disabled():
            return 0
        if len(text) <= _MAX_EXACT_CHARS:
            return count_exactly(text)
        n = _EXTRAPOLATION_SAMPLES
        size = _MAX_EXACT_CHARS // n
        last = len(text) - size
        samples = [text[start : start + size] for start in (last * i // (n - 1) for i in range(n))]
        return round(sum(map(count_exactly, samples)) * len(text) / (size * n))

    def count_messages(messages: list[dict[str, Any]]) -> int:
        if _litellm_counting_disabled():
            return 0
        if any(
            not isinstance(value, str | None) or (key in _CALL_KEYS and value is not None)
            for message in messages
            for key, value in message.items()
        ):
            # Content parts, tool calls...: litellm's accounting for them, which imports it.
            from ._litellm import load_litellm

            return int(load_litellm().token_counter(model=bare, messages=messages))
        total = TOKENS_REPLY_PRIMING
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if isinstance(value, str):  # litellm counts every string field, a name costs 1 more
                    total += count_text(value) + (key == "name")
        return total

    return TokenCounter(model, f"tiktoken:{encoding_name}", True, "", count_text, count_messages)


def _load_encoding(name: str) -> Any:
    """tiktoken's encoding ``name``, read from the folder litellm would read it from (no network).
    Points TIKTOKEN_CACHE_DIR there, as importing litellm does too."""
    import tiktoken

    with _tiktoken_env_lock:
        folder = _tiktoken_cache_folder()
        if folder is not None:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)
        return tiktoken.get_encoding(name)


def _litellm_counting_disabled() -> bool:
    """``litellm.disable_token_counter`` (then litellm.token_counter answers 0), when loaded."""
    loaded = sys.modules.get("litellm")
    return loaded is not None and getattr(loaded, "disable_token_counter", False) is True
