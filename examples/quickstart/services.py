"""Context services: what one retrieval request returns."""

from features import product_attributes, user_order_stats, user_profile

from contextkit import ContextService

support_assistant = ContextService(
    name="support_assistant",
    features=[user_order_stats, user_profile],
    description="What a support assistant should know about the user it is talking to.",
)

product_lookup = ContextService(
    name="product_lookup",
    features=[product_attributes[["name", "category", "price", "sku"]]],
    description="Catalog facts about a product.",
)
