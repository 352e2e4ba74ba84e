"""HTTP: / (landing page), /metrics, /healthz, /readyz. Read-only: nothing served changes the agent's state."""

from __future__ import annotations

from collections.abc import Callable

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
</ul>
</body></html>
"""


def make_app(render_metrics: Callable[[], bytes], ready: Callable[[], str | None]) -> web.Application:
    """`ready()` returns None when ready, else the reason it is not."""

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

    app = web.Application()
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
