"""The HTTP server's limits, in one place: a cap on open connections, a deadline for each request's headers,
and the file descriptors they may use. Routes live in khan.web; this module only builds the listening server.

A connection must send complete request headers within `header_timeout` of opening or of its previous
response, or it is closed: slowloris clients and idle keep-alive connections both go. At the connection cap a
new connection evicts the longest-idle one (one not being answered), so idle sockets can never lock out the
kubelet's probe; only when every connection is busy is the new one refused. The cap leaves room below the
soft file limit for the backlog of accepted sockets and for the agent's own descriptors (netlink, /proc, the
API), so a flood of connections cannot make a poll fail with EMFILE.

TLS is started on each connection after the guard has counted it (asyncio's own TLS listener would tell the
guard only after the handshake, and gives each socket still in it a quarter of a megabyte of buffer): a
connection in its handshake is idle, so evictable, and is cut if the handshake is not done within
HANDSHAKE_SECONDS (or the header deadline, if shorter).
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.web_request import BaseRequest

from khan.logs import RateLimiter

log = structlog.get_logger("khan.server")

BACKLOG = 128  # asyncio accepts up to this many sockets in one go, before the cap sees any of them
# The kernel's queue of connections not yet accepted, longer than the batch: a burst of connections (a flood of
# idle sockets) then waits there for the cap to sort it out, instead of having SYNs dropped; dropped SYNs would
# include the kubelet's, retried only after 1 s, its whole timeout. Capped by net.core.somaxconn.
KERNEL_BACKLOG = 4096
RESERVED_DESCRIPTORS = 128  # the agent's own: netlink sockets, /proc and inventory files, API connections
MIN_CONNECTIONS = 8
# Connections the cap on requests in flight always leaves free, so that the kubelet's probes find one even when
# every other connection is being answered.
PROBE_CONNECTIONS = 4

# A handshake takes milliseconds on a node's network, but under a flood of them the event loop works through a
# queue: 2 s cut a legitimate scraper's handshake (1 in 20) while 60 clients made 2,300 handshakes a second.
HANDSHAKE_SECONDS = 5.0
# Request bytes that may arrive with a TLS handshake's last message and are held until the handler is made: far
# more than a request's head (aiohttp's limit is 8 KiB a line), far less than would matter per connection.
EARLY_DATA_LIMIT = 64 * 1024
SERVER_NAME = "khan"  # the Server header: no versions for a scanner to match
# At shutdown, answers under way get this long to finish before their connections are cut (and aiohttp this
# long again to end its handlers): a scraper that stops reading cannot hold the exit past its deadline.
CLOSE_GRACE_SECONDS = 0.5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_connections: int
    header_timeout_seconds: float
    max_line_size: int = 8190  # aiohttp's defaults, named: a longer request line or header field gets a 400
    max_field_size: int = 8190


def raise_file_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit, said once; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20  # the kernel's default nr_open
    if soft == resource.RLIM_INFINITY or soft >= target:
        log.info("file_limit", soft=soft, hard=hard, raised=False)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("file_limit_not_raised", soft=soft, hard=hard, error=str(exc))
        return soft
    log.info("file_limit", soft=target, hard=hard, raised_from=soft)
    return target


def connection_cap(wanted: int, soft_file_limit: int) -> int:
    """`wanted`, or less where the file limit could not hold it next to the backlog and the agent's own."""
    room = soft_file_limit - BACKLOG - RESERVED_DESCRIPTORS
    cap = max(MIN_CONNECTIONS, min(wanted, room))
    if cap < wanted:
        log.warning("connection_cap_lowered", wanted=wanted, cap=cap, soft_file_limit=soft_file_limit)
    return cap


def request_cap(wanted: int, max_connections: int) -> int:
    """`wanted`, or less where busy requests could fill every connection and leave none for the probes."""
    cap = max(1, min(wanted, max_connections - PROBE_CONNECTIONS))
    if cap < wanted:
        log.warning("request_cap_lowered", wanted=wanted, cap=cap, max_connections=max_connections)
    return cap


class _Connection:
    __slots__ = ("busy", "idle_since", "timer", "transport")

    def __init__(self, transport: asyncio.Transport, now: float) -> None:
        self.transport = transport
        self.idle_since = now
        self.busy = 0
        self.timer: asyncio.TimerHandle | None = None


class ConnectionGuard:
    """Counts open connections, knows which are being answered, closes the idle and the slow."""

    def __init__(self, limits: ServerLimits, loop: asyncio.AbstractEventLoop) -> None:
        self._limits = limits
        self._loop = loop
        self._open: dict[asyncio.BaseProtocol, _Connection] = {}
        self._warnings = RateLimiter(period=60.0)

    @property
    def header_timeout_seconds(self) -> float:
        return self._limits.header_timeout_seconds

    def protocol_factory(
        self, make_handler: Callable[[], asyncio.Protocol], tls: ssl.SSLContext | None
    ) -> Callable[[], asyncio.Protocol]:
        def build() -> asyncio.Protocol:
            return _Tracked(make_handler(), self, tls)

        return build

    def opened(self, handler: asyncio.BaseProtocol, transport: asyncio.Transport) -> bool:
        """Counts the connection; False if it was refused (and closed) at the cap."""
        if len(self._open) >= self._limits.max_connections and not self._evict_one():
            self._warn("http_connection_refused", reason="every connection is being answered")
            transport.abort()
            return False
        connection = _Connection(transport, self._loop.time())
        self._open[handler] = connection
        self._schedule(connection, connection.idle_since + self._limits.header_timeout_seconds)
        return True

    def upgraded(self, handler: asyncio.BaseProtocol, transport: asyncio.Transport) -> None:
        """The handshake is done: the headers' deadline starts now, and closing means the TLS transport."""
        connection = self._open.get(handler)
        if connection is not None:
            connection.transport = transport
            connection.idle_since = self._loop.time()

    async def drain(self, seconds: float) -> None:
        """Returns once no connection is being answered, or after `seconds`."""
        deadline = self._loop.time() + seconds
        while any(c.busy for c in self._open.values()) and self._loop.time() < deadline:
            await asyncio.sleep(0.05)

    def abort_all(self) -> None:
        for connection in list(self._open.values()):
            if connection.timer is not None:
                connection.timer.cancel()
            connection.transport.abort()
        self._open.clear()

    def closed(self, handler: asyncio.BaseProtocol) -> None:
        connection = self._open.pop(handler, None)
        if connection is not None and connection.timer is not None:
            connection.timer.cancel()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outermost: marks the connection busy from complete headers until the answer is handed over."""
        connection = self._open.get(request.protocol)
        if connection is None:
            return await handler(request)
        connection.busy += 1
        try:
            return await handler(request)
        finally:
            connection.busy -= 1
            connection.idle_since = self._loop.time()

    def _evict_one(self) -> bool:
        idle = [(c.idle_since, h) for h, c in self._open.items() if c.busy == 0]
        if not idle:
            return False
        _, handler = min(idle, key=lambda pair: pair[0])
        connection = self._open.pop(handler)
        if connection.timer is not None:
            connection.timer.cancel()
        connection.transport.abort()
        self._warn("http_connections_at_cap", cap=self._limits.max_connections, action="closed the longest idle")
        return True

    def _schedule(self, connection: _Connection, when: float) -> None:
        connection.timer = self._loop.call_at(when, self._check, connection)

    def _check(self, connection: _Connection) -> None:
        deadline = connection.idle_since + self._limits.header_timeout_seconds
        if connection.busy:
            deadline = self._loop.time() + self._limits.header_timeout_seconds
        elif self._loop.time() >= deadline:
            connection.timer = None
            connection.transport.abort()  # no half-close dance with a client that sends nothing
            return
        self._schedule(connection, deadline)

    def _warn(self, event: str, **context: object) -> None:
        allowed, held = self._warnings.allow(event)
        if allowed:
            log.warning(event, suppressed_since_last=held, **context)


class _Tracked(asyncio.Protocol):
    """aiohttp's RequestHandler, with the guard told when its connection opens and closes, and TLS started on
    the connection once the guard has counted it."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard, tls: ssl.SSLContext | None) -> None:
        self._inner = inner
        self._guard = guard
        self._tls = tls
        self._made = False  # the inner handler has its transport (after the handshake, with TLS)
        self._handshake: asyncio.Task[None] | None = None
        # With TLS, the first request may come decrypted with the handshake's last bytes, before start_tls
        # returns and the handler is made (a client that disables Nagle sends them in one segment): it is held
        # here and handed over, not dropped.
        self._early: list[bytes] = []
        self._early_bytes = 0
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream: asyncio.Transport = transport  # type: ignore[assignment]  # a stream server's
        if not self._guard.opened(self._inner, stream):
            return
        if self._tls is None:
            self._made = True
            self._inner.connection_made(stream)
            return
        stream.pause_reading()  # nothing is read before start_tls puts its protocol in place
        self._handshake = asyncio.ensure_future(self._start_tls(stream, self._tls))

    async def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        secure: asyncio.Transport | None = None
        if not transport.is_closing():  # evicted before the handshake began
            try:
                secure = await loop.start_tls(
                    transport,
                    self,
                    context,
                    server_side=True,
                    ssl_handshake_timeout=min(HANDSHAKE_SECONDS, self._guard.header_timeout_seconds),
                )
            except Exception:  # a failed, slow or abandoned handshake: asyncio logs as before, the socket goes
                secure = None
        if secure is None:  # start_tls returns None when the connection was cut during the handshake
            self._guard.closed(self._inner)
            transport.abort()
            return
        if self._early_bytes > EARLY_DATA_LIMIT or self._early_eof:
            self._guard.closed(self._inner)
            secure.abort()
            return
        self._guard.upgraded(self._inner, secure)
        self._made = True
        self._inner.connection_made(secure)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self._inner)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
        if self._made:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._made:
            self._inner.data_received(data)
            return
        # Only start_tls's protocol calls this before the handler is made, with the bytes decrypted in the
        # handshake's last read: a bounded amount, but a peer cannot make it grow unchecked either.
        self._early_bytes += len(data)
        if self._early_bytes <= EARLY_DATA_LIMIT:
            self._early.append(data)
        else:
            self._early.clear()  # _start_tls drops the connection

    def eof_received(self) -> bool | None:
        if self._made:
            return self._inner.eof_received()
        # A peer that closed in the handshake's last read: TLS cannot half-close, so asyncio shuts the connection
        # whatever this returns, and no answer could reach the peer; _start_tls drops it.
        self._early_eof = True
        return None

    def pause_writing(self) -> None:
        if self._made:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._made:
            self._inner.resume_writing()


class _RequestHandler(web.RequestHandler):
    """aiohttp's, except that its own error answers (a 400 to bytes that are not HTTP, an oversized header) name
    khan as their Server, not aiohttp and Python's versions (aiohttp only sets the header where none is set);
    the app's answers are named in on_response_prepare."""

    __slots__ = ()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        answer = super().handle_error(request, status, exc, message)
        answer.headers[hdrs.SERVER] = SERVER_NAME
        return answer


async def name_the_server(_: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: runs after aiohttp has set its default Server header, which this replaces."""
    response.headers[hdrs.SERVER] = SERVER_NAME


@dataclass
class RunningServer:
    runner: web.AppRunner
    server: asyncio.Server
    guard: ConnectionGuard

    async def close(self) -> None:
        """Stops listening; answers under way get CLOSE_GRACE_SECONDS, then every connection is cut."""
        self.server.close()
        try:
            await self.guard.drain(CLOSE_GRACE_SECONDS)
        finally:
            self.guard.abort_all()
            await self.runner.cleanup()


async def start_server(
    app: web.Application,
    limits: ServerLimits,
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
) -> RunningServer:
    """Listen with the limits. A TLS context, when given, wraps every connection; middlewares (auth, say) are
    the app's own and run inside the guard's. Raises OSError when the address cannot be bound."""
    loop = asyncio.get_running_loop()
    guard = ConnectionGuard(limits, loop)
    app.middlewares.insert(0, guard.middleware)
    app.on_response_prepare.append(name_the_server)
    handler_options: dict[str, Any] = {
        "access_log": None,
        "keepalive_timeout": limits.header_timeout_seconds,
        "max_line_size": limits.max_line_size,
        "max_field_size": limits.max_field_size,
    }
    # aiohttp waits this long for its handlers at cleanup (60 s by default), after the guard has cut them.
    runner = web.AppRunner(app, shutdown_timeout=CLOSE_GRACE_SECONDS, **handler_options)
    await runner.setup()
    manager = runner.server
    assert manager is not None  # set by setup()

    def make_handler() -> asyncio.Protocol:
        return _RequestHandler(manager, loop=loop, **handler_options)

    try:
        server = await loop.create_server(
            guard.protocol_factory(make_handler, ssl_context),  # TLS is started per connection, once counted
            host,
            port,
            backlog=BACKLOG,
            reuse_address=True,
        )
    except OSError:
        await runner.cleanup()
        raise
    for listening in server.sockets:
        # asyncio listens with the batch size; a duplicate descriptor of the same socket sets the kernel's queue.
        with socket.socket(fileno=os.dup(listening.fileno())) as same:
            same.listen(KERNEL_BACKLOG)
    return RunningServer(runner, server, guard)
