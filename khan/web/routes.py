"""HTTP: / (landing page), /metrics, /healthz, /readyz, and k8sconntrack's /transactions and /flows as JSON.
Read-only: nothing served changes the agent's state (no counter is reset by a read, unlike k8sconntrack)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import hdrs, web

from khan import __version__
from khan.metrics.exposition import Exposition, choose

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

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
MAX_LIMIT_DIGITS = 6  # checked before int(): Python refuses to convert more than 4,300 digits
# The kubelet's probes: cheap, never behind the cap on requests in flight.
PROBES = frozenset({"/healthz", "/readyz"})
# A scrape's body goes out in slices: a slow reader holds one slice of buffer, not the whole 7.5 MB (10,000
# series, plain text).
SEND_CHUNK_BYTES = 256 * 1024
# A scraper still reading after this gives its slot back (7.5 MB in a minute is 125 kB/s; gzipped, 2.5 kB/s).
SEND_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Endpoints:
    """What the routes read. `ready()` returns None when ready, else the reason it is not. `exposition()` is
    the last poll's rendering (bytes ready to send)."""

    exposition: Callable[[], Exposition]
    ready: Callable[[], str | None]
    transactions: Callable[[], Awaitable[bytes]]  # JSON, encoded once per poll
    flows: Callable[[int], Awaitable[bytes]]  # JSON of the first N heaviest flows


def make_app(endpoints: Endpoints, max_requests: int, middlewares: Sequence[Middleware] = ()) -> web.Application:
    """The routes, behind a cap of `max_requests` answers in flight (503 beyond it; the probes bypass it).
    `middlewares` (auth, say) run before the cap: credentials being checked hold no scrape's slot."""
    routes = _Routes(endpoints)
    app = web.Application(middlewares=[*middlewares, _in_flight_cap(max_requests)])
    app.router.add_get("/", routes.landing)
    app.router.add_get("/metrics", routes.metrics)
    app.router.add_get("/healthz", routes.healthz)
    app.router.add_get("/readyz", routes.readyz)
    app.router.add_get("/transactions", routes.transactions)
    app.router.add_get("/flows", routes.flows)
    return app


class _Routes:
    def __init__(self, endpoints: Endpoints) -> None:
        self._endpoints = endpoints

    async def landing(self, _: web.Request) -> web.Response:
        return web.Response(text=LANDING_PAGE, content_type="text/html")

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """The last rendering in the format and encoding asked for, sent in slices within SEND_TIMEOUT_SECONDS."""
        chosen = choose(
            self._endpoints.exposition(),
            request.headers.get(hdrs.ACCEPT, ""),
            request.headers.get(hdrs.ACCEPT_ENCODING, ""),
        )
        response = web.StreamResponse(
            headers={hdrs.CONTENT_TYPE: chosen.content_type, hdrs.VARY: "Accept, Accept-Encoding"}
        )
        if chosen.gzipped:
            response.headers[hdrs.CONTENT_ENCODING] = "gzip"
        response.content_length = len(chosen.body)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                await response.prepare(request)
                body = memoryview(chosen.body if request.method != hdrs.METH_HEAD else b"")  # HEAD: headers alone
                for start in range(0, len(body), SEND_CHUNK_BYTES):
                    await response.write(body[start : start + SEND_CHUNK_BYTES])
                await response.write_eof()
        except (TimeoutError, ConnectionError):  # too slow, or gone: the connection goes, nothing to log
            if request.transport is not None:
                request.transport.abort()
        return response

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _: web.Request) -> web.Response:
        reason = self._endpoints.ready()
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def transactions(self, _: web.Request) -> web.Response:
        body = await self._endpoints.transactions()
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def flows(self, request: web.Request) -> web.Response:
        raw = request.query.get("limit", str(DEFAULT_FLOWS_LIMIT))
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        if (
            not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_LIMIT_DIGITS)
            or not 1 <= int(raw) <= MAX_FLOWS_LIMIT
        ):
            return web.json_response(
                {"error": f"limit must be a whole number from 1 to {MAX_FLOWS_LIMIT}, got {shown!r}"}, status=400
            )
        body = await self._endpoints.flows(int(raw))
        return web.Response(body=body, content_type="application/json", charset="utf-8")


def _in_flight_cap(max_requests: int) -> Middleware:
    """node_exporter's --web.max-requests: beyond the cap a request gets 503 at once instead of queueing."""
    in_flight = 0

    @web.middleware
    async def cap(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        nonlocal in_flight
        if request.path in PROBES:
            return await handler(request)
        if in_flight >= max_requests:
            return web.Response(status=503, text=f"too many requests in flight (at most {max_requests})\n")
        in_flight += 1
        try:
            return await handler(request)
        finally:
            in_flight -= 1

    return cap
