"""Request-body parsing and response serialization on the hot path: FastAPI's declared body
parameter vs ``parse_body``, and a declared response model vs ``json_response`` (orjson).

The server validates every body against one pydantic model per route (the same model its OpenAPI
schema comes from). Two ways to run that model: declare it as the handler's parameter (FastAPI
reads the body, decodes the JSON, then validates the Python objects) or call
``server.common.parse_body`` (pydantic-core validates the raw bytes in one step). This script
times both on the same ``POST /v1/features`` body through the ASGI stack, in interleaved rounds,
with no store work behind them, so the difference is the parsing path alone. The second pair
answers the same ``/v1/features`` response (``FEATURES_EXAMPLE``, 2 entities x 3 columns) either
through the declared ``FeaturesResponse`` model (FastAPI validates and serializes it) or by hand
with orjson, the path the route takes::

    python bench/body_parsing.py              # 20 rounds x 500 requests per path
    python bench/body_parsing.py --rounds 5   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response

from contextkit.server.common import json_response, parse_body
from contextkit.server.features import FEATURES_EXAMPLE, FeaturesRequest, FeaturesResponse

JSON = {"content-type": "application/json"}
BODY = b'{"workspace": "prod", "service": "support_assistant", "entities": {"user_id": [1, 2]}}'


def build_app() -> FastAPI:
    app = FastAPI()

    @app.post("/declared")
    async def declared(body: FeaturesRequest) -> Response:
        return json_response({"service": body.service})

    @app.post("/parse_body")
    async def parsed(request: Request) -> Response:
        body = await parse_body(request, FeaturesRequest)
        return json_response({"service": body.service})

    @app.post("/answer_declared", response_model=FeaturesResponse)
    async def answer_declared(request: Request) -> dict:
        body = await parse_body(request, FeaturesRequest)
        return {**FEATURES_EXAMPLE, "metadata": {**FEATURES_EXAMPLE["metadata"], "x": body.service}}

    @app.post("/answer_orjson", response_model=FeaturesResponse)
    async def answer_orjson(request: Request) -> Response:
        body = await parse_body(request, FeaturesRequest)
        answer = {
            **FEATURES_EXAMPLE,
            "metadata": {**FEATURES_EXAMPLE["metadata"], "x": body.service},
        }
        return json_response(answer)

    return app


PAIRS = (("/declared", "/parse_body"), ("/answer_declared", "/answer_orjson"))


async def time_path(client: httpx.AsyncClient, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        began = time.perf_counter()
        response = await client.post(path, content=BODY, headers=JSON)
        out.append(time.perf_counter() - began)
        assert response.status_code == 200, response.text
    return out


async def main(rounds: int, n: int) -> None:
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for pair in PAIRS:
            for path in pair:
                await time_path(client, path, 200)  # warm every path
        samples: dict[str, list[float]] = {path: [] for pair in PAIRS for path in pair}
        for _ in range(rounds):
            for path in samples:
                samples[path] += await time_path(client, path, n)
    p50 = {p: statistics.median(v) * 1e6 for p, v in samples.items()}
    p99 = {p: statistics.quantiles(v, n=100)[98] * 1e6 for p, v in samples.items()}
    print(f"{'path':<18}{'p50 us':>10}{'p99 us':>10}")
    for path in samples:
        print(f"{path:<18}{p50[path]:>10.1f}{p99[path]:>10.1f}")
    for declared, by_hand in PAIRS:
        print(f"{by_hand} / {declared} at p50: {p50[by_hand] / p50[declared]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.requests))
