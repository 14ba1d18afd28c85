"""Feature views: a user's recent spending, their profile, and product attributes."""

from datetime import timedelta

from entities import product, user
from sources import orders, products, users

from contextkit import Aggregate, Attribute, batch_feature_view

WINDOWS = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7),
           "30d": timedelta(days=30)}  # fmt: skip


@batch_feature_view(
    sources=[orders],
    entities=[user],
    mode="sql",
    features=[
        *[Aggregate(column="amount", function="sum", time_window=w) for w in WINDOWS.values()],
        *[
            Aggregate(column="order_id", function="count", time_window=w, name=f"order_count_{n}")
            for n, w in WINDOWS.items()
        ],
        Aggregate(column="amount", function="mean", time_window=timedelta(days=30)),
        Aggregate(column="amount", function="max", time_window=timedelta(days=30)),
        Aggregate(
            column="product_id",
            function="count_distinct",
            time_window=timedelta(days=30),
            name="distinct_products_30d",
        ),
        Aggregate(
            column="product_id",
            function="last",
            time_window=timedelta(days=30),
            name="last_product_id",
        ),
    ],
    batch_schedule=timedelta(hours=1),
    owner="growth",
    tags={"team": "support"},
)
def user_order_stats(orders):
    """Spend and order counts of completed orders over the last hour, day, week and month."""
    return f"""
        SELECT user_id, order_id, product_id, amount, ts
        FROM {orders}
        WHERE status = 'completed'
    """


@batch_feature_view(
    sources=[users],
    entities=[user],
    mode="pandas",
    features=[Attribute("tier"), Attribute("country"), Attribute("is_paid")],
    timestamp_field="signup_ts",
)
def user_profile(users):
    """Account tier and country (a pandas-mode view: the function gets a DataFrame)."""
    out = users[["user_id", "tier", "country", "signup_ts"]].copy()
    out["is_paid"] = out["tier"] != "free"
    return out


@batch_feature_view(
    sources=[products],
    entities=[product],
    mode="sql",
    features=[
        Attribute("name"),
        Attribute("category"),
        Attribute("brand"),
        Attribute("price"),
        Attribute("sku"),
    ],
)
def product_attributes(products):
    """Catalog attributes of each product (latest version of the row)."""
    return f"SELECT product_id, name, category, brand, price, sku, updated_at FROM {products}"
