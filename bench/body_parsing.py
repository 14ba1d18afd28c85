"""Request-body parsing on the hot path: FastAPI's declared body parameter vs ``parse_body``.

The server validates every body against one pydantic model per route (the same model its OpenAPI
schema comes from). Two ways to run that model: declare it as the handler's parameter (FastAPI
reads the body, decodes the JSON, then validates the Python objects) or call
``server.common.parse_body`` (pydantic-core validates the raw bytes in one step). This script
times both on the same ``POST /v1/features`` body through the ASGI stack, in interleaved rounds,
with no store work behind them, so the difference is the parsing path alone::

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
from contextkit.server.features import FeaturesRequest

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

    return app


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
        await time_path(client, "/declared", 200)  # warm both paths
        await time_path(client, "/parse_body", 200)
        samples: dict[str, list[float]] = {"/declared": [], "/parse_body": []}
        for _ in range(rounds):
            for path in samples:
                samples[path] += await time_path(client, path, n)
    p50 = {p: statistics.median(v) * 1e6 for p, v in samples.items()}
    p99 = {p: statistics.quantiles(v, n=100)[98] * 1e6 for p, v in samples.items()}
    print(f"{'path':<14}{'p50 us':>10}{'p99 us':>10}")
    for path in samples:
        print(f"{path:<14}{p50[path]:>10.1f}{p99[path]:>10.1f}")
    print(f"parse_body / declared at p50: {p50['/parse_body'] / p50['/declared']:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.requests))
