"""The transport, through kubernetes_asyncio against a real in-process HTTP server on 127.0.0.1 that imitates
/api/v1/pods and the review endpoints, turns each answer into its typed outcome: a page's bytes, a stream's lines
and how it ended (closed or silent), and one error with its code when the server refuses, never answers, cuts the
stream or sends an oversized event. Then the reflector over the real transport, on virtual sleep: the whole wire
path of a paged list, events and a bookmark, and the readiness of an agent whose aiohttp lacks readline's
max_line_length."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from khan.inventory import kube_transport
from khan.inventory import watch_stats as reasons
from khan.inventory.api_config import ApiConfig
from khan.inventory.kube_reviews import ReviewClient, ReviewError
from khan.inventory.kube_transport import KubeTransport, connect
from khan.inventory.objects import POD
from khan.inventory.reflector import RESOURCES, Reflector, Timing
from khan.inventory.watch_cache import WatchCache
from khan.inventory.watch_protocol import ApiStatusError, StreamEnd, TransportError
from khan.inventory.watch_stats import WatchStats
from tests.support.kube_wire import (
    EXPIRED_STATUS,
    LIST_A,
    LIST_RV,
    POD_A,
    bookmark,
    event,
    owner_of,
    pod,
    pod_list,
    status,
)

TEST_LIMIT_SECONDS = 10.0
INACTIVITY = 0.3  # seconds: short, so that silence is found quickly

Handler = Callable[["FakeApi", web.Request, int], Awaitable[web.StreamResponse]]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """kubernetes_asyncio's session trusts the environment: a proxy variable must not reroute 127.0.0.1."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


async def list_a(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
    return web.Response(body=LIST_A, content_type="application/json")


async def hold_open(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
    """A healthy, quiet watch: headers sent, then nothing until the test ends."""
    return await stream(api, request, [], then="hold")


@dataclass
class FakeApi:
    """/api/v1/pods: `on_list` answers lists, `on_watch` watches, both given the request's 1-based number;
    `reviews` answers the review endpoints with (status, body)."""

    on_list: Handler = list_a
    on_watch: Handler = hold_open
    reviews: tuple[int, dict[str, Any]] = (201, {"status": {"authenticated": True}})
    lists: list[dict[str, str]] = field(default_factory=list)
    watches: list[dict[str, str]] = field(default_factory=list)
    posted: list[Any] = field(default_factory=list)
    credentials: list[tuple[str | None, str | None]] = field(default_factory=list)  # (Authorization, Accept)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set at teardown: held handlers return

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.credentials.append((request.headers.get("Authorization"), request.headers.get("Accept")))
        if request.query.get("watch", "").lower() == "true":
            self.watches.append(dict(request.query))
            return await self.on_watch(self, request, len(self.watches))
        self.lists.append(dict(request.query))
        return await self.on_list(self, request, len(self.lists))

    async def review(self, request: web.Request) -> web.StreamResponse:
        self.credentials.append((request.headers.get("Authorization"), request.headers.get("Accept")))
        self.posted.append(await request.json())
        code, body = self.reviews
        return web.json_response(body, status=code)


async def stream(api: FakeApi, request: web.Request, lines: Iterable[bytes], then: str) -> web.StreamResponse:
    """A chunked watch answer of `lines`, then "end" it properly, "hold" it open, or "break" the connection."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for line in lines:
        await response.write(line)
    if then == "hold":
        await api.released.wait()
    elif then == "break":
        assert request.transport is not None
        request.transport.close()  # no terminating chunk: the stream is cut in the middle
        await api.released.wait()
    else:
        await response.write_eof()
    return response


@contextlib.asynccontextmanager
async def serving(api: FakeApi, tmp_path: Path) -> AsyncIterator[KubeTransport]:
    """The fake API on a free port of 127.0.0.1, and a transport connected to it through a kubeconfig."""
    app = web.Application()
    app.router.add_get("/api/v1/pods", api.handle)
    app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", api.review)
    app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", api.review)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    config = kubeconfig(tmp_path, f"http://127.0.0.1:{runner.addresses[0][1]}")
    transport = await connect(config)
    try:
        yield transport
    finally:
        await transport.close()
        api.released.set()
        await runner.cleanup()


def kubeconfig(tmp_path: Path, server: str) -> ApiConfig:
    path = tmp_path / "kubeconfig"
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "khan", "user": {"token": "secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "khan"}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(document))
    return ApiConfig(str(path), "--kubeconfig")


def run(scenario: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_LIMIT_SECONDS):
            await scenario

    asyncio.run(bounded())


async def read_all(transport: KubeTransport, resource_version: str = LIST_RV) -> list[bytes | StreamEnd]:
    """Every line of one watch, and how it ended."""
    outcomes: list[bytes | StreamEnd] = []
    async with transport.watch("pods", resource_version, 45, INACTIVITY) as lines:
        while not isinstance(outcome := await lines.next_line(), StreamEnd):
            outcomes.append(outcome)
    return [*outcomes, outcome]


# Lists.


def test_a_list_page_is_the_servers_bytes_asked_for_with_its_limit_and_continue_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        api = FakeApi()
        async with serving(api, tmp_path) as transport:
            assert await transport.list_page("pods", 500, "") == LIST_A
            assert await transport.list_page("pods", 500, "abc") == LIST_A
        assert api.lists == [{"limit": "500"}, {"limit": "500", "continue": "abc"}]
        assert api.credentials == [("Bearer secret", "application/json")] * 2

    run(scenario())


def test_a_refused_list_is_its_status_message_and_retry_after(tmp_path: Path) -> None:
    async def throttled(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        body = status(429, "TooManyRequests", "too many requests, please try again later")
        return web.json_response(body, status=429, headers={"Retry-After": "2"})

    async def scenario() -> None:
        async with serving(FakeApi(on_list=throttled), tmp_path) as transport:
            with pytest.raises(ApiStatusError) as refused:
                await transport.list_page("pods", 500, "")
        assert (refused.value.code, refused.value.message) == (429, "too many requests, please try again later")
        assert refused.value.retry_after == 2.0

    run(scenario())


def test_a_server_that_is_not_there_is_a_connection_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        transport = await connect(kubeconfig(tmp_path, f"http://127.0.0.1:{port}"))
        try:
            with pytest.raises(TransportError) as failed:
                await transport.list_page("pods", 500, "")
        finally:
            await transport.close()
        assert failed.value.code == "connection"
        assert str(failed.value).startswith("list pods: ")

    run(scenario())


# Watches: lines, and how they end.


def test_a_watch_asks_from_its_resource_version_with_bookmarks_and_gives_its_lines_then_closed(tmp_path: Path) -> None:
    lines = [event("ADDED", POD_A), b"\n", b"   \n", bookmark("12")]

    async def events(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        return await stream(api, request, lines, then="end")

    async def scenario() -> None:
        api = FakeApi(on_watch=events)
        async with serving(api, tmp_path) as transport:
            assert await read_all(transport) == [event("ADDED", POD_A), bookmark("12"), StreamEnd.CLOSED]
        query = api.watches[0]
        assert query["resourceVersion"] == LIST_RV
        assert query["allowWatchBookmarks"].lower() == "true"
        assert query["timeoutSeconds"] == "45"

    run(scenario())


def test_a_watch_that_says_nothing_for_the_inactivity_limit_ends_silent(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(FakeApi(), tmp_path) as transport:
            assert await read_all(transport) == [StreamEnd.SILENT]

    run(scenario())


def test_a_watch_whose_headers_never_come_times_out(tmp_path: Path) -> None:
    """The inactivity limit (aiohttp's sock_read) bounds the wait for the headers too: a "timeout" error."""

    async def silent(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        await api.released.wait()  # no status line, no headers, ever
        return web.Response(status=504)  # to a connection the client has long closed

    async def scenario() -> None:
        async with serving(FakeApi(on_watch=silent), tmp_path) as transport:
            with pytest.raises(TransportError) as failed:
                await read_all(transport)
        assert failed.value.code == "timeout"
        assert str(failed.value).startswith("watch pods:")

    run(scenario())


def test_http_410_on_a_watch_is_the_status_error(tmp_path: Path) -> None:
    async def gone(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response(EXPIRED_STATUS, status=410)

    async def scenario() -> None:
        async with serving(FakeApi(on_watch=gone), tmp_path) as transport:
            with pytest.raises(ApiStatusError) as refused:
                await read_all(transport)
        assert (refused.value.code, refused.value.message) == (410, "too old resource version")

    run(scenario())


def test_a_stream_cut_mid_way_breaks_after_its_good_lines(tmp_path: Path) -> None:
    good = event("ADDED", pod("pod-b", "10.244.1.6", "11"))

    async def cut(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        return await stream(api, request, [good], then="break")

    async def scenario() -> None:
        async with (
            serving(FakeApi(on_watch=cut), tmp_path) as transport,
            transport.watch("pods", LIST_RV, 45, INACTIVITY) as lines,
        ):
            assert await lines.next_line() == good
            with pytest.raises(TransportError) as failed:
                await lines.next_line()
        assert failed.value.code == "connection"
        assert str(failed.value).startswith("watch stream broke")

    run(scenario())


def test_an_event_longer_than_the_limit_breaks_the_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 64 * 1024
    monkeypatch.setattr(kube_transport, "MAX_EVENT_BYTES", limit)
    huge = event("ADDED", pod("pod-huge", "10.244.1.9", "12", app="x" * (2 * limit)))

    async def oversized(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        return await stream(api, request, [event("ADDED", POD_A), huge], then="hold")

    async def scenario() -> None:
        async with (
            serving(FakeApi(on_watch=oversized), tmp_path) as transport,
            transport.watch("pods", LIST_RV, 45, INACTIVITY) as lines,
        ):
            assert await lines.next_line() == event("ADDED", POD_A)
            with pytest.raises(TransportError) as failed:
                await lines.next_line()
        assert failed.value.code == "connection"
        assert str(failed.value).startswith("watch stream broke")

    run(scenario())


# Reviews.


def test_a_review_is_created_with_its_group_and_gives_its_status(tmp_path: Path) -> None:
    async def scenario() -> None:
        api = FakeApi()
        async with serving(api, tmp_path) as transport:
            client = ReviewClient(kubeconfig(tmp_path, transport.host))
            await client.start()
            try:
                assert await client.review("TokenReview", {"token": "t"}, 5.0) == {"authenticated": True}
                api.reviews = (403, status(403, "Forbidden", "cannot create subjectaccessreviews"))
                with pytest.raises(ReviewError, match=r"^SubjectAccessReview: 403 \{"):
                    await client.review("SubjectAccessReview", {"user": "u"}, 5.0)
            finally:
                await client.close()
        assert api.posted == [
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "t"}},
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "u"}},
        ]
        assert api.credentials == [("Bearer secret", "application/json")] * 2

    run(scenario())


# What is loaded.

LOADED = """
import asyncio, sys
from khan.inventory.api_config import ApiConfig
from khan.inventory.kube_transport import connect

async def main():
    transport = await connect(ApiConfig(sys.argv[1], "--kubeconfig"))
    await transport.close()
    generated = ("kubernetes_asyncio.client.models.", "kubernetes_asyncio.client.api.")
    print(sum(m.startswith(generated) for m in sys.modules), sum(m.startswith("urllib3.") for m in sys.modules))
    import urllib3  # registered unexecuted: its first use loads it whole
    print(urllib3.util.make_headers(basic_auth="a:b"), urllib3.PoolManager.__name__)
    from kubernetes_asyncio.client import CoreV1Api  # a name the lean packages lack: their real __init__ runs
    import kubernetes_asyncio
    print(CoreV1Api.__name__, kubernetes_asyncio.client.models.V1Pod.__name__, kubernetes_asyncio.watch.Watch.__name__)

asyncio.run(main())
"""


def test_the_transport_loads_no_generated_api_class_or_model_yet_the_library_stays_whole(tmp_path: Path) -> None:
    """kubernetes_asyncio's __init__ files import ~1,100 generated modules (36 MB of RSS) khan never calls."""
    config = kubeconfig(tmp_path, "http://127.0.0.1:1")
    root = Path(__file__).resolve().parent.parent.parent  # this khan, whatever the working directory
    run_ = subprocess.run(
        [sys.executable, "-c", LOADED, str(config.kubeconfig)], capture_output=True, text=True, check=True, cwd=root
    )
    lines = run_.stdout.split("\n")
    assert lines[:3] == ["0 0", "{'authorization': 'Basic YTpi'} PoolManager", "CoreV1Api V1Pod Watch"]


def test_a_review_the_api_cannot_answer_is_a_review_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
        client = ReviewClient(kubeconfig(tmp_path, f"http://127.0.0.1:{port}"))
        await client.start()
        try:
            with pytest.raises(ReviewError, match=r"^TokenReview: "):
                await client.review("TokenReview", {"token": "t"}, 5.0)
        finally:
            await client.close()

    run(scenario())


# The reflector over the real transport; its sleeps are virtual, so no delay of khan's is waited for.


@contextlib.asynccontextmanager
async def reflecting(api: FakeApi, tmp_path: Path) -> AsyncIterator[tuple[WatchCache, WatchStats, list[float]]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    async with serving(api, tmp_path) as transport:
        cache = WatchCache(deleted_pod_grace_seconds=60)
        stats = WatchStats(tuple(RESOURCES.values()))
        timing = Timing(sleep=sleep, random=lambda: 0.5)
        task = asyncio.create_task(Reflector(POD, transport, cache, stats, 60.0, timing=timing).run())
        try:
            yield cache, stats, slept
            assert not task.done()  # a reflector never ends by itself
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def test_paged_list_events_and_bookmark_over_the_wire_then_resume_from_the_bookmark(tmp_path: Path) -> None:
    async def two_pages(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        if request.query.get("continue") == "abc":
            return web.Response(body=pod_list([pod("pod-b", "10.244.1.6", "7")]), content_type="application/json")
        return web.Response(body=pod_list([POD_A], continue_token="abc"), content_type="application/json")

    async def events_then_end(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        if n > 1:
            return await stream(api, request, [], then="hold")
        lines = [
            event("ADDED", pod("pod-c", "10.244.1.7", "11")),
            event("MODIFIED", pod("pod-a", "10.244.1.5", "12", app="api")),
            event("DELETED", pod("pod-b", "10.244.1.6", "13")),
            bookmark("20"),
        ]
        return await stream(api, request, lines, then="end")  # the server's timeoutSeconds ran out: routine

    async def scenario() -> None:
        api = FakeApi(on_list=two_pages, on_watch=events_then_end)
        async with reflecting(api, tmp_path) as (cache, stats, slept):
            await eventually(lambda: len(api.watches) == 2, "the second watch")
            assert [query.get("continue") for query in api.lists] == [None, "abc"]
            assert [query["resourceVersion"] for query in api.watches] == [LIST_RV, "20"]

            def owner(ip: str) -> Any:
                return cache.inventory().owner(socket.inet_aton(ip))

            assert owner("10.244.1.7") == owner_of("pod-c")
            assert owner("10.244.1.5") == owner_of("pod-a", app="api")
            assert owner("10.244.1.6") == owner_of("pod-b")  # deleted, lingering for its grace period
            assert (cache.count(POD), cache.lingering) == (2, 1)
            assert stats["pods"].watch_starts == {reasons.INITIAL: 1, reasons.CLOSED: 1}
            assert not stats["pods"].errors
            assert slept == []

    run(scenario())


async def readline_before_3_13_4(self: aiohttp.StreamReader) -> bytes:
    """StreamReader.readline exactly as aiohttp released it up to 3.13.3 (which kubernetes-asyncio's range allows):
    it takes no max_line_length, so the watch's call raises TypeError on every attempt."""
    return await self.readuntil()


def test_an_aiohttp_without_max_line_length_turns_readiness_red(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiohttp.StreamReader, "readline", readline_before_3_13_4)

    async def scenario() -> None:
        api = FakeApi()
        async with reflecting(api, tmp_path) as (_, stats, slept):
            await eventually(
                lambda: stats["pods"].crashes_in_a_row >= reasons.CRASHES_BEFORE_UNREADY, "watches crashing"
            )
            assert slept[:3] == [0.375, 0.75, 1.5]
            assert stats["pods"].synced  # the list worked: what it said is still served
            assert stats["pods"].errors["watch", "internal"] == stats["pods"].crashes_in_a_row
            assert len(api.lists) == 1  # the watch is retried, not the list
            reason = stats.not_ready_reason()
            assert reason is not None
            assert "the watch of pods fails on every attempt (" in reason
            assert "TypeError" in reason
            assert "max_line_length" in reason

    run(scenario())
