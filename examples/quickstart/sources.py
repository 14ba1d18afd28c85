"""Sources: the raw data, as files (written by generate_data.py)."""

from contextkit import FileSource

orders = FileSource(
    name="orders",
    path="data/orders.parquet",
    timestamp_field="ts",
    description="One row per order: who bought what, for how much, when.",
)

products = FileSource(
    name="products",
    path="data/products.parquet",
    timestamp_field="updated_at",
    description="The product catalog, with text descriptions.",
)

users = FileSource(
    name="users",
    path="data/users.parquet",
    timestamp_field="signup_ts",
    description="User accounts.",
)

support_articles = FileSource(
    name="support_articles",
    path="data/support_articles.parquet",
    timestamp_field="updated_at",
    description="Help-center articles on returns, refunds, shipping, warranty and payments.",
)
