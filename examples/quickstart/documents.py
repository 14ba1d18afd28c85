"""Embedding views: product descriptions and help articles, searchable by meaning and keyword."""

from entities import article, product
from sources import products, support_articles

from contextkit import EmbeddingView, embedding_view

product_docs = EmbeddingView(
    name="product_docs",
    source=products,
    entities=[product],
    text="description",
    model="minilm",  # the packaged all-MiniLM-L6-v2, on ONNX Runtime (contextkit.yaml)
    metadata=["name", "category", "brand", "price", "sku"],
    description="Product descriptions, one document per product.",
)


@embedding_view(
    sources=[support_articles],
    entities=[article],
    text="doc",
    metadata=["title", "category"],
    chunking={"by": "tokens", "size": 128, "overlap": 16},
)
def help_articles(support_articles):
    """Help-center articles, title and body, in chunks of 128 model tokens."""
    return f"""
        SELECT article_id, title || '. ' || body AS doc, title, category
        FROM {support_articles}
    """
