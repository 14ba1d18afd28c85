"""Context services: what one retrieval request returns."""

from assistant import support_prompt
from features import product_attributes, user_order_stats, user_profile

from contextkit import ContextService

support_assistant = ContextService(
    name="support_assistant",
    features=[user_order_stats, user_profile],
    prompts=[support_prompt],
    description="What a support assistant should know about the user it is talking to, the "
    "products and help articles that match their question, and the prompt that puts them together.",
)

product_lookup = ContextService(
    name="product_lookup",
    features=[product_attributes[["name", "category", "price", "sku"]]],
    description="Catalog facts about a product.",
)
