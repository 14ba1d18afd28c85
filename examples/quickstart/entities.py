"""Entities: what the features describe."""

from contextkit import Entity

user = Entity(name="user", join_keys=["user_id"], description="A shopper.", owner="growth")
product = Entity(name="product", join_keys=["product_id"], description="A catalog item.")
article = Entity(name="article", join_keys=["article_id"], description="A help-center article.")
