"""The quickstart repo, through the SDK: every served feature equals plain SQL over the raw data."""

from __future__ import annotations

import duckdb
import pytest

import contextkit
from tests.conftest import DATA_END


@pytest.fixture(scope="module")
def ctx(quickstart_data):
    ctx = contextkit.connect(quickstart_data, workspace="prod")
    ctx.create_workspace("prod", live=True)
    ctx.apply(ctx.plan(quickstart_data))
    jobs = ctx.materialize(end=DATA_END)
    assert {j.view for j in jobs} == {
        "user_order_stats",
        "user_profile",
        "product_attributes",
        "product_docs",
        "help_articles",
    }
    assert all(j.status == "succeeded" for j in jobs)
    return ctx


def _sql(query: str) -> list[tuple]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(query).fetchall()


def test_user_order_stats_match_sql(ctx, quickstart_data):
    orders = quickstart_data / "data" / "orders.parquet"
    end = DATA_END.isoformat()
    expected = {
        r[0]: r[1:]
        for r in _sql(
            f"""
            SELECT user_id,
              sum(amount) FILTER (WHERE ts > e - INTERVAL 1 HOUR),
              sum(amount) FILTER (WHERE ts > e - INTERVAL 1 DAY),
              sum(amount) FILTER (WHERE ts > e - INTERVAL 7 DAY),
              sum(amount) FILTER (WHERE ts > e - INTERVAL 30 DAY),
              count(*) FILTER (WHERE ts > e - INTERVAL 7 DAY),
              max(amount), count(DISTINCT product_id), arg_max(product_id, ts)
            FROM read_parquet('{orders}'), (SELECT TIMESTAMPTZ '{end}' AS e)
            WHERE status = 'completed' AND ts <= e AND ts > e - INTERVAL 30 DAY
            GROUP BY user_id
            """
        )
    }
    users = sorted(expected)[:40] + [10_000_000]
    result = ctx.get_features("support_assistant", entities={"user_id": users}).to_dict()
    assert result["user_id"] == users
    for i, user in enumerate(users):
        if user not in expected:
            assert result["user_order_stats.amount_sum_30d"][i] is None
            continue
        s1h, s1d, s7d, s30d, n7d, mx, distinct, last = expected[user]
        got = {k.split(".", 1)[1]: v[i] for k, v in result.items() if "." in k}
        assert got["amount_sum_1h"] == (pytest.approx(s1h) if s1h is not None else None)
        assert got["amount_sum_1d"] == (pytest.approx(s1d) if s1d is not None else None)
        assert got["amount_sum_7d"] == (pytest.approx(s7d) if s7d is not None else None)
        assert got["amount_sum_30d"] == pytest.approx(s30d)
        assert got["order_count_7d"] == n7d
        assert got["amount_max_30d"] == pytest.approx(mx)
        assert got["distinct_products_30d"] == distinct
        assert got["last_product_id"] == last


def test_pandas_mode_profile_and_product_attributes(ctx, quickstart_data):
    data = quickstart_data / "data"
    users = _sql(
        f"SELECT user_id, tier, country FROM read_parquet('{data}/users.parquet') "
        "ORDER BY user_id LIMIT 5"
    )
    frame = ctx.get_features(
        "support_assistant", entities={"user_id": [u[0] for u in users]}
    ).to_pandas()
    assert list(frame["user_profile.tier"]) == [u[1] for u in users]
    assert list(frame["user_profile.country"]) == [u[2] for u in users]
    assert list(frame["user_profile.is_paid"]) == [u[1] != "free" for u in users]
    assert "user_profile.event_timestamp" in frame.columns

    products = _sql(
        f"SELECT product_id, name, price, sku FROM read_parquet('{data}/products.parquet')"
        " ORDER BY product_id DESC LIMIT 3"
    )
    got = ctx.get_features("product_lookup", entities={"product_id": [p[0] for p in products]})
    assert got.names == [
        "product_attributes.name",
        "product_attributes.category",
        "product_attributes.price",
        "product_attributes.sku",
    ]
    as_dict = got.to_dict()
    assert as_dict["product_attributes.name"] == [p[1] for p in products]
    assert as_dict["product_attributes.sku"] == [p[3] for p in products]


def test_rematerializing_the_same_range_changes_nothing(ctx):
    before = ctx.get_features("support_assistant", entities={"user_id": [1, 2, 3]}).to_dict()
    offline_before = sorted(str(p.name) for p in ctx.offline.files("prod/user_order_stats"))
    jobs = ctx.materialize(["user_order_stats"], end=DATA_END)
    assert jobs[0].rows_offline == 0  # the watermark already covers the range
    after = ctx.get_features("support_assistant", entities={"user_id": [1, 2, 3]}).to_dict()
    assert after == before
    assert sorted(str(p.name) for p in ctx.offline.files("prod/user_order_stats")) == offline_before


def test_product_docs_find_a_product_by_its_sku_and_by_meaning(ctx, quickstart_data):
    products = _sql(
        f"SELECT product_id, sku, category, name FROM "
        f"read_parquet('{quickstart_data}/data/products.parquet') ORDER BY product_id"
    )
    product_id, sku, category, name = products[len(products) // 2]
    by_code = ctx.search("product_docs", sku, top_k=3, mode="text")
    assert by_code[0]["key"] == {"product_id": product_id}
    assert by_code[0]["metadata"]["sku"] == sku
    hybrid = ctx.search("product_docs", f"{sku} {name}", top_k=3, mode="hybrid")
    assert hybrid[0]["key"] == {"product_id": product_id}
    # By meaning: the product's own name finds it (or one of its category) first.
    by_meaning = ctx.search("product_docs", name, top_k=3)
    assert by_meaning[0]["metadata"]["category"] == category
    in_category = ctx.search("product_docs", name, top_k=5, filter={"category": category})
    assert {h["metadata"]["category"] for h in in_category} == {category}


def test_help_articles_are_chunked_and_keep_their_parent_key(ctx, quickstart_data):
    articles = _sql(
        f"SELECT count(*) FROM read_parquet('{quickstart_data}/data/support_articles.parquet')"
    )[0][0]
    table = ctx.vectors._open("prod__help_articles").to_arrow()
    assert table.num_rows > articles  # long articles span several 128-token chunks
    assert len(set(table.column("article_id").to_pylist())) == articles
    hits = ctx.search("help_articles", "how many days do I have to return an item", top_k=5)
    assert all(h["key"]["article_id"] >= 1 and h["chunk_index"] >= 0 for h in hits)
    assert any("return" in h["text"].lower() for h in hits)
