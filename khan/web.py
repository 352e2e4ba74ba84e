"""HTTP: / (landing page), /metrics, /healthz, /readyz, and k8sconntrack's /transactions and /flows as JSON.
Read-only: nothing served changes the agent's state (no counter is reset by a read, unlike k8sconntrack)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from khan import __version__

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LANDING_PAGE = f"""<!doctype html>
<html><head><title>khan</title></head>
<body>
<h1>khan {__version__}</h1>
<p>Which pods, services, nodes and outside addresses are connected to which, from this node's conntrack table.</p>
<ul>
<li><a href="metrics">/metrics</a>: khan_connection and khan's own health</li>
<li><a href="healthz">/healthz</a>: the process is alive</li>
<li><a href="readyz">/readyz</a>: a poll has succeeded</li>
<li><a href="transactions">/transactions</a>: new connections per service endpoint since start (JSON)</li>
<li><a href="flows">/flows</a>: the heaviest current connections and their bytes (JSON; ?limit=N)</li>
</ul>
</body></html>
"""


DEFAULT_FLOWS_LIMIT = 100
MAX_FLOWS_LIMIT = 10_000  # the agent keeps this many of each poll's heaviest flows, and no more


@dataclass(frozen=True)
class Endpoints:
    """What the routes read. `ready()` returns None when ready, else the reason it is not."""

    render_metrics: Callable[[], bytes]
    ready: Callable[[], str | None]
    transactions: Callable[[], list[dict[str, object]]]
    flows: Callable[[int], list[dict[str, object]]]


def make_app(endpoints: Endpoints, middlewares: Sequence[Any] = ()) -> web.Application:
    """`middlewares`: authentication (khan.protection), run before every route."""
    render_metrics, ready = endpoints.render_metrics, endpoints.ready

    async def landing(_: web.Request) -> web.Response:
        return web.Response(text=LANDING_PAGE, content_type="text/html")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=render_metrics(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        reason = ready()
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def transactions(_: web.Request) -> web.Response:
        return web.json_response(endpoints.transactions())

    async def flows(request: web.Request) -> web.Response:
        raw = request.query.get("limit", str(DEFAULT_FLOWS_LIMIT))
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_FLOWS_LIMIT:
            return web.json_response(
                {"error": f"limit must be a whole number from 1 to {MAX_FLOWS_LIMIT}, got {raw!r}"}, status=400
            )
        return web.json_response(endpoints.flows(int(raw)))

    app = web.Application(middlewares=list(middlewares))
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/transactions", transactions)
    app.router.add_get("/flows", flows)
    return app
