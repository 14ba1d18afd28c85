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
    get_token_counter("gpt-4o")  # loads litellm if nothing did yet
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
