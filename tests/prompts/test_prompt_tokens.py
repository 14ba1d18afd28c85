"""Token counting (offline) and fitting a prompt into a token budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contextkit.prompts import (
    PromptTemplate,
    count_tokens,
    fit_to_budget,
    get_token_counter,
    render_messages,
)

DOCS_TEMPLATE = PromptTemplate(
    "Answer from these notes.\n"
    "{% for doc in documents %}\n"
    "[{{ doc.id }}] {{ doc.text }}\n"
    "{% endfor %}\n"
    "Question: {{ query }}",
    name="qa",
)


def render_docs(documents):
    return DOCS_TEMPLATE.render({"documents": documents, "query": "How do refunds work?"})


def note(doc_id, score, words=30):
    return {"id": doc_id, "text": " ".join([f"{doc_id}-fact"] * words), "score": score}


# -- counting --------------------------------------------------------------------------------


@pytest.fixture
def fresh_counters():
    get_token_counter.cache_clear()
    yield
    get_token_counter.cache_clear()


@pytest.mark.parametrize(
    ("model", "method", "tokens"),
    [
        ("gpt-4o", "tiktoken:o200k_base", 2),
        ("openai/gpt-4o-mini", "tiktoken:o200k_base", 2),
        ("gpt-4", "tiktoken:cl100k_base", 2),
        ("openai/stub-model", "tiktoken:cl100k_base", 2),
    ],
)
def test_openai_models_count_exactly_with_bundled_tiktoken_files(
    no_network, fresh_counters, model, method, tokens
):
    counter = get_token_counter(model)

    assert (counter.method, counter.exact) == (method, True)
    assert count_tokens("Hello world", model) == tokens


@pytest.mark.parametrize(
    "model", ["llama-3-8b-instruct", "ollama/llama-2-7b", "groq/llama-3.1-70b-versatile"]
)
def test_models_whose_tokenizer_needs_a_download_fall_back_to_the_approximation(
    no_network, fresh_counters, model
):
    counter = get_token_counter(model)

    assert counter.method == "approximate" and not counter.exact
    assert count_tokens("Hello world, how are you?", model) > 0


def test_hub_tokenizer_models_are_flagged_for_download():
    counter = get_token_counter("llama-3-8b-instruct")

    assert "Hugging Face" in counter.reason


def test_no_model_means_the_approximation_without_litellm():
    counter = get_token_counter(None)

    assert counter.method == "approximate"
    assert counter.reason == "no model given"
    assert count_tokens("") == 0


def test_litellm_was_loaded_without_fetching_the_remote_cost_map(no_network, fresh_counters):
    get_token_counter("openai/stub-model")  # loads litellm if nothing did yet
    from litellm.litellm_core_utils.get_model_cost_map import get_model_cost_map_source_info

    info = get_model_cost_map_source_info()

    assert info["source"] == "local", info


def test_approximation_is_close_to_a_real_tokenizer_and_errs_high():
    prose = (
        "Customers who bought this item also bought related products, and the recommendation "
        "engine shows them on the product page. Refunds are processed within five days. "
    ) * 10

    exact = count_tokens(prose, "gpt-4o")
    approx = count_tokens(prose)

    assert exact <= approx <= exact * 1.5


def test_messages_cost_their_contents_plus_overhead():
    messages = render_messages([("system", "Be brief."), ("user", "{{ q }}")], {"q": "Hi there"})

    for model in (None, "gpt-4o"):
        contents = sum(count_tokens(m["content"], model) for m in messages)
        assert count_tokens(messages, model) >= contents + 2 * 3


def test_truncate_keeps_the_longest_prefix_that_fits():
    counter = get_token_counter("gpt-4o")
    text = " ".join(f"word{i}" for i in range(500))

    cut = counter.truncate(text, 50, end=" …")

    assert counter.count(cut) <= 50
    assert text.startswith(cut.removesuffix(" …"))
    assert counter.count(counter.truncate(text, 51, end=" …")) > 50 - 5  # it is not over-cut


# -- budgets ---------------------------------------------------------------------------------


def test_everything_fits_in_a_large_budget():
    docs = [note("a", 0.9), note("b", 0.5)]

    fit = fit_to_budget(render_docs, docs, max_tokens=10_000)

    assert fit.dropped == [] and not fit.truncated
    assert fit.kept == docs
    assert fit.rendered == render_docs(docs)
    assert fit.tokens == count_tokens(fit.rendered)
    assert fit.tokenizer == "approximate"


def test_a_tight_budget_drops_the_lowest_scored_documents_first():
    docs = [note("best", 0.95), note("worst", 0.10), note("good", 0.70), note("meh", 0.40)]
    two_docs = count_tokens(render_docs([docs[0], docs[2]]))

    fit = fit_to_budget(render_docs, docs, max_tokens=two_docs, model="gpt-4o")

    assert fit.dropped == ["worst", "meh"]
    assert [d["id"] for d in fit.kept] == ["best", "good"]  # original order kept
    assert not fit.truncated
    assert fit.tokens <= two_docs
    assert fit.tokenizer == "tiktoken:o200k_base"


def test_a_tiny_budget_drops_every_document_then_truncates():
    docs = [note("a", 0.9), note("b", 0.2), note("c", 0.5)]

    fit = fit_to_budget(render_docs, docs, max_tokens=5, model="gpt-4o")

    assert fit.dropped == ["b", "c", "a"]
    assert fit.kept == []
    assert fit.truncated
    assert fit.tokens <= 5
    assert render_docs([]).startswith(fit.rendered)


def test_documents_without_ids_or_scores_are_reported_by_index_and_dropped_first():
    docs = [
        {"text": "x " * 50, "score": 0.5},
        {"text": "y " * 50},
        {"id": "z", "text": "z", "score": 0.9},
    ]

    fit = fit_to_budget(lambda kept: "".join(d["text"] for d in kept), docs, max_tokens=45)

    assert fit.dropped == [1, 0]


def test_chat_messages_are_fitted_and_the_longest_message_is_cut():
    chat = [("system", "Notes:\n{{ documents | map(attribute='text') | bullet }}"), ("user", "Q?")]
    docs = [note("a", 0.9, words=200)]

    fit = fit_to_budget(
        lambda kept: render_messages(chat, {"documents": kept}), docs, max_tokens=30, model="gpt-4"
    )

    assert fit.dropped == ["a"]
    # With no documents the messages fit, so nothing was truncated.
    assert not fit.truncated and fit.tokens <= 30

    long_question = [("system", "Be brief."), ("user", "why " * 300)]
    fit = fit_to_budget(lambda kept: render_messages(long_question, {}), [], max_tokens=40)
    assert fit.truncated and fit.tokens <= 40
    assert fit.rendered[0] == {"role": "system", "content": "Be brief."}


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_tokens"):
        fit_to_budget(render_docs, [], max_tokens=0)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(0, 1, allow_nan=False), min_size=0, max_size=8),
    budget=st.integers(1, 400),
)
def test_fit_always_respects_the_budget_and_drops_in_score_order(scores, budget):
    docs = [note(f"d{i}", score, words=10 + i) for i, score in enumerate(scores)]

    fit = fit_to_budget(render_docs, docs, max_tokens=budget)

    assert fit.tokens <= budget
    dropped_scores = [next(d["score"] for d in docs if d["id"] == i) for i in fit.dropped]
    kept_scores = [d["score"] for d in fit.kept]
    assert dropped_scores == sorted(dropped_scores)
    assert not kept_scores or not dropped_scores or max(dropped_scores) <= min(kept_scores)
    assert len(fit.kept) + len(fit.dropped) == len(docs)


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "gpt-4", "openai/stub-model", "claude-2"])
def test_exact_counts_are_litellms_own_without_resolving_the_model_per_call(
    no_network, fresh_counters, model
):
    from contextkit.prompts._litellm import load_litellm

    litellm = load_litellm()
    counter = get_token_counter(model)
    texts = ["", "Hello world", "naïve café 日本語 😀 ```code```", "word " * 3000, "x" * 20_000]
    bare = model.rsplit("/", 1)[-1]
    assert counter.exact
    assert [counter.count(t) for t in texts] == [
        litellm.token_counter(model=bare, text=t) if t else 0 for t in texts
    ]


# OpenAI models are counted with tiktoken directly (no litellm import); the counts must stay
# litellm.token_counter's, chunk boundaries and special-token text included.
DIRECT_MODELS = [
    ("openai/gpt-4o-mini", "o200k_base"),
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1-mini", "o200k_base"),
    ("o3-mini", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("openai/gpt-3.5-turbo", "cl100k_base"),
]
DIRECT_TEXTS = [
    "Hello world",
    "naïve café 日本語 😀 ```code``` <|endoftext|> <|fim_prefix|>",
    "You are the support assistant.\n\n  - refunds: 5 days\n\t- orders: 1,234.50 EUR\n" * 40,
    "x" * 5_000,  # one piece over several 1,024-character chunks
    ("é" * 700 + " ") * 4,  # chunk boundaries inside multi-byte runs
]
DIRECT_MESSAGES = [
    {"role": "system", "content": "Answer from the notes.\n" * 30},
    {"role": "user", "content": "Where is my order #1234?", "name": "ada"},
    {"role": "assistant", "content": None},
]


@pytest.mark.parametrize(("model", "encoding"), DIRECT_MODELS)
def test_openai_models_count_like_litellm_with_tiktoken_alone(
    no_network, fresh_counters, model, encoding
):
    counter = get_token_counter(model)
    assert counter.method == f"tiktoken:{encoding}" and counter.exact
    assert counter._count_messages is not None  # the direct counter, not litellm's
    assert counter._count_messages.__qualname__.startswith("_direct_openai_counter")

    from contextkit.prompts._litellm import load_litellm

    litellm = load_litellm()
    bare = model.rsplit("/", 1)[-1]
    assert [counter.count(text) for text in DIRECT_TEXTS] == [
        litellm.token_counter(model=bare, text=text) for text in DIRECT_TEXTS
    ]
    assert counter.count(DIRECT_MESSAGES) == litellm.token_counter(
        model=bare, messages=DIRECT_MESSAGES
    )


def test_messages_with_content_parts_are_counted_by_litellm(no_network, fresh_counters):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello there, world"}]}]
    counter = get_token_counter("gpt-4o")

    from contextkit.prompts._litellm import load_litellm

    assert counter.count(parts) == load_litellm().token_counter(model="gpt-4o", messages=parts)


def test_counting_for_an_openai_model_does_not_import_litellm():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from contextkit.prompts.tokens import get_token_counter\n"
        "counter = get_token_counter('openai/gpt-4o-mini')\n"
        "print(counter.method, counter.count('Hello world'), 'litellm' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["tiktoken:o200k_base", "2", "False"]
