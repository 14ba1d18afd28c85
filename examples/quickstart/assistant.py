"""The support assistant's prompt: the user's recent orders, matching products and help articles."""

from documents import help_articles, product_docs
from features import user_order_stats, user_profile

from contextkit import PromptView, RequestField, Search, TemplateFile

support_prompt = PromptView(
    name="support_prompt",
    format="messages",
    messages=[
        ("system", TemplateFile("templates/support_system.jinja")),
        ("user", "{{ query }}"),
    ],
    features=[user_order_stats, user_profile],
    searches=[
        Search(product_docs, name="products", top_k=4, mode="hybrid"),
        Search(help_articles, name="articles", top_k=3),
    ],
    request_context=[RequestField("channel", "string", default="chat")],
    max_tokens=1200,
    model="openai/gpt-4o-mini",
    params={"temperature": 0.2},
    description="System instructions with the customer's facts, then the customer's question.",
)
