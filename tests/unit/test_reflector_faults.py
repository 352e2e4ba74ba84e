"""The pod reflector, driven by kubernetes_asyncio against a real in-process HTTP server that imitates
/api/v1/pods, survives a misbehaving API server: 410s relist with a growing backoff instead of spinning, silent,
oversized, garbage and broken streams are counted and resumed, Retry-After and 5xx answers are obeyed, and the
normal paged list, events and bookmarks keep the cache and the resume point right."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s

from khan.inventory import kube
from khan.inventory import watch_stats as reasons
from khan.inventory.objects import EXTERNAL, POD, Owner
from khan.inventory.watch_cache import WatchCache
from khan.inventory.watch_stats import ResourceStats, WatchStats

TEST_LIMIT_SECONDS = 10.0
LIST_RV = "10"

Handler = Callable[["FakeApi", web.Request, int], Awaitable[web.StreamResponse]]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """kubernetes_asyncio's session trusts the environment: a proxy variable must not reroute 127.0.0.1."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


# The wire: pods, list pages, watch lines, Status objects.


def pod(name: str, ip: str, rv: str, app: str = "web") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv, "labels": {"app": app}},
        "spec": {"nodeName": "node1"},
        "status": {"phase": "Running", "podIP": ip},
    }


def event(event_type: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": {"kind": "Pod", "apiVersion": "v1", **obj}}).encode() + b"\n"


def bookmark(rv: str) -> bytes:
    return event("BOOKMARK", {"metadata": {"resourceVersion": rv}})


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


EXPIRED_STATUS = status(410, "Expired", "too old resource version")
ERROR_EVENT = json.dumps({"type": "ERROR", "object": EXPIRED_STATUS}).encode() + b"\n"
POD_A = pod("pod-a", "10.244.1.5", "5")


def owner_of(name: str, app: str = "web") -> Owner:
    return Owner("pod", "shop", app, name)


def pod_list(items: list[dict[str, Any]], rv: str = LIST_RV, continue_token: str = "") -> web.Response:
    metadata: dict[str, str] = {"resourceVersion": rv}
    if continue_token:
        metadata["continue"] = continue_token
    return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items})


# The server.


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    at: float  # monotonic
    query: Mapping[str, str]


async def list_pod_a(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
    return pod_list([POD_A])


async def hold_open(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
    """A healthy, quiet watch: headers sent, then nothing until the test ends."""
    return await stream(api, request, [], then="hold")


@dataclass
class FakeApi:
    """/api/v1/pods: `on_list` answers lists, `on_watch` watches; both get the request's 1-based number."""

    on_list: Handler = list_pod_a
    on_watch: Handler = hold_open
    lists: list[Seen] = field(default_factory=list)
    watches: list[Seen] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set at teardown: held handlers return

    async def handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(time.monotonic(), dict(request.query))
        if request.query.get("watch", "").lower() == "true":
            self.watches.append(seen)
            return await self.on_watch(self, request, len(self.watches))
        self.lists.append(seen)
        return await self.on_list(self, request, len(self.lists))


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


@dataclass
class Running:
    api: FakeApi
    cache: WatchCache
    stats: ResourceStats
    task: asyncio.Task[None]
    started: float
    all_stats: WatchStats

    def owner(self, ip: str) -> Owner:
        return self.cache.inventory().owner(socket.inet_aton(ip))

    def alive(self) -> bool:
        return not self.task.done()


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def reflecting(api: FakeApi, watch_timeout_seconds: float = 60.0) -> AsyncIterator[Running]:
    """The fake API on a free port of 127.0.0.1 and a pod Reflector running against it through kubernetes_asyncio;
    on exit the reflector is cancelled (it must still be running), the client closed and the server stopped."""
    app = web.Application()
    app.router.add_get("/api/v1/pods", api.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    configuration = k8s.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    api_client = k8s.ApiClient(configuration)
    cache = WatchCache(deleted_pod_grace_seconds=60)
    stats = WatchStats(tuple(kube.RESOURCES.values()))
    call = k8s.CoreV1Api(api_client).list_pod_for_all_namespaces
    reflector = kube.Reflector(POD, call, cache, stats, watch_timeout_seconds)
    task = asyncio.create_task(reflector.run(), name="watch-pods")
    try:
        yield Running(api, cache, stats["pods"], task, time.monotonic(), stats)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api_client.close()
        api.released.set()
        await runner.cleanup()


def run(scenario: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_LIMIT_SECONDS):
            await scenario

    asyncio.run(bounded())


def gaps(seen: list[Seen]) -> list[float]:
    return [later.at - earlier.at for earlier, later in itertools.pairwise(seen)]


# 410 Gone: relist, but never in a tight loop.


def assert_relists_slowly(running: Running, watches_seen: int) -> None:
    api, stats = running.api, running.stats
    # Lists at ~0 s, ~0 s (the first relist is immediate), then after 0.5-1 s, 1-2 s, 2-4 s: four in 3 s, and a
    # fifth is impossible before 3.5 s. A backoff that a successful list resets would relist hundreds of times.
    between, lists = gaps(api.lists), len(api.lists)
    assert 3 <= lists <= 5, f"{lists} lists in 3 s, {[round(gap, 2) for gap in between[:8]]} s apart"
    assert between[0] < 0.4  # the first relist is immediate
    assert between[1] >= 0.45  # the second waits 0.5-1 s
    assert all(gap >= 0.95 for gap in between[2:])  # the third 1-2 s
    assert stats.watch_starts[reasons.INITIAL] == 1
    # A request the server has seen may not have been answered yet when the test looks.
    assert len(api.lists) - 2 <= stats.watch_starts[reasons.EXPIRED] <= len(api.lists) - 1
    assert watches_seen - 1 <= stats.errors["watch", "410"] <= watches_seen
    assert set(stats.errors) == {("watch", "410")}
    assert all(seen.query.get("resourceVersion") == LIST_RV for seen in api.watches)
    assert stats.synced
    assert stats.last_error == "410 too old resource version"
    assert running.owner("10.244.1.5") == owner_of("pod-a")  # each relist replaced the cache with the same pod
    assert running.alive()


def test_410_error_events_relist_with_backoff_not_in_a_tight_loop() -> None:
    async def expired(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        return await stream(api, request, [ERROR_EVENT], then="end")

    async def scenario() -> None:
        api = FakeApi(on_watch=expired)
        async with reflecting(api) as running:
            await asyncio.sleep(3.0)
            assert_relists_slowly(running, len(api.watches))

    run(scenario())


def test_http_410_on_watch_relists_with_backoff_not_in_a_tight_loop() -> None:
    async def gone(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response(EXPIRED_STATUS, status=410)

    async def scenario() -> None:
        api = FakeApi(on_watch=gone)
        async with reflecting(api) as running:
            await asyncio.sleep(3.0)
            assert_relists_slowly(running, len(api.watches))

    run(scenario())


# A stream that says nothing, says too much, or says nonsense.


def test_a_watch_that_never_answers_times_out_and_is_tried_again() -> None:
    """--watch-timeout 1 gives timeoutSeconds=1 and sock_read = 1 + 1 = 2 s, which bounds the wait for the
    headers: the request fails as a "timeout" error (not an "inactive" stream) and is retried after a backoff."""

    async def silent(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            await api.released.wait()  # no status line, no headers, ever
            return web.Response(status=504)  # to a connection the client has long closed
        return await stream(api, request, [], then="hold")

    async def scenario() -> None:
        api = FakeApi(on_watch=silent)
        async with reflecting(api, watch_timeout_seconds=1) as running:
            await eventually(lambda: len(api.watches) >= 2, "a second watch request", timeout=6.0)
            stats = running.stats
            assert api.watches[0].query.get("timeoutSeconds") == "1"
            gap = api.watches[1].at - api.watches[0].at
            assert 1.9 <= gap <= 3.5, gap  # 2 s of sock_read, then a backoff of 0.25-0.5 s
            assert stats.errors == {("watch", "timeout"): 1}
            assert stats.watch_starts == {reasons.INITIAL: 1, reasons.ERROR: 1}
            assert stats.last_error is not None
            assert stats.last_error.startswith("watch pods:")
            assert api.watches[1].query.get("resourceVersion") == LIST_RV
            assert len(api.lists) == 1
            assert running.alive()

    run(scenario())


def resumes_after_a_broken_first_stream(
    after_good: list[bytes],
    then: str,
    code: str,
    error_prefix: str | None = None,
    owners: Mapping[str, Owner] | None = None,
) -> None:
    """The first watch delivers pod-b (resourceVersion 11), then `after_good` and `then`. One error is counted
    under `code`, and the next watch resumes at 11 with no relist and pod-b still applied."""

    async def first_stream_broken(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            good = event("ADDED", pod("pod-b", "10.244.1.6", "11"))
            return await stream(api, request, [good, *after_good], then=then)
        return await stream(api, request, [], then="hold")

    async def scenario() -> None:
        api = FakeApi(on_watch=first_stream_broken)
        async with reflecting(api) as running:
            await eventually(lambda: len(api.watches) >= 2, "a second watch request")
            await asyncio.sleep(0.2)
            stats = running.stats
            assert stats.errors == {("watch", code): 1}
            assert stats.watch_starts == {reasons.INITIAL: 1, reasons.ERROR: 1}
            if error_prefix is not None:
                assert stats.last_error is not None
                assert stats.last_error.startswith(error_prefix)
            assert api.watches[1].query.get("resourceVersion") == "11"  # after the last good event
            assert running.owner("10.244.1.6") == owner_of("pod-b")  # the good event stays applied
            for ip, owner in (owners or {}).items():
                assert running.owner(ip) == owner
            assert len(api.lists) == 1
            assert running.alive()

    run(scenario())


def test_an_event_longer_than_the_limit_breaks_the_stream_which_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 64 * 1024
    monkeypatch.setattr(kube, "MAX_EVENT_BYTES", limit)
    huge = pod("pod-huge", "10.244.1.9", "12", app="x" * (2 * limit))
    owners = {"10.244.1.5": owner_of("pod-a"), "10.244.1.9": EXTERNAL}
    resumes_after_a_broken_first_stream([event("ADDED", huge)], "hold", "connection", owners=owners)


def test_a_line_that_is_not_json_is_counted_invalid_and_the_watch_resumes() -> None:
    resumes_after_a_broken_first_stream([b"<html>502 Bad Gateway</html>\n"], "hold", "invalid", "not JSON")


# Lists refused: Retry-After is obeyed, 5xx backs off.


def test_a_429_list_waits_for_retry_after_then_syncs() -> None:
    async def throttled(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            body = status(429, "TooManyRequests", "too many requests, please try again later")
            return web.json_response(body, status=429, headers={"Retry-After": "2"})
        return pod_list([POD_A])

    async def scenario() -> None:
        api = FakeApi(on_list=throttled)
        async with reflecting(api) as running:
            await eventually(lambda: running.stats.synced, "synced", timeout=5.0)
            stats = running.stats
            assert len(api.lists) == 2
            gap = api.lists[1].at - api.lists[0].at
            assert 1.95 <= gap <= 3.0, gap  # max(backoff of 0.25-0.5 s, Retry-After 2 s)
            assert stats.errors == {("list", "429"): 1}
            assert stats.last_error == "429 too many requests, please try again later"
            await eventually(lambda: len(api.watches) == 1, "the watch")
            assert running.owner("10.244.1.5") == owner_of("pod-a")
            assert running.alive()

    run(scenario())


def test_500_lists_back_off_with_growing_delays_then_sync() -> None:
    async def failing(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        if n <= 3:
            return web.json_response(status(500, "InternalError", "etcdserver: request timed out"), status=500)
        return pod_list([POD_A])

    async def scenario() -> None:
        api = FakeApi(on_list=failing)
        async with reflecting(api) as running:
            await eventually(lambda: len(api.lists) >= 2, "a second list")
            assert not running.stats.synced
            await eventually(lambda: running.stats.synced, "synced", timeout=6.0)
            stats = running.stats
            assert len(api.lists) == 4
            assert stats.errors == {("list", "500"): 3}
            first, second, third = gaps(api.lists)
            # Steps of 0.5, 1 and 2 s, each waited for between half and all of it.
            assert 0.2 <= first <= 0.7, first
            assert 0.45 <= second <= 1.2, second
            assert 0.95 <= third <= 2.3, third
            assert first < third
            await eventually(lambda: len(api.watches) == 1, "the watch")
            assert stats.watch_starts == {reasons.INITIAL: 1}  # the first watch, however many lists failed
            assert running.owner("10.244.1.5") == owner_of("pod-a")
            assert running.alive()

    run(scenario())


# The normal path, and a stream cut in the middle.


def test_paged_list_events_and_bookmark_then_resume_from_the_bookmark() -> None:
    events: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def two_pages(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        assert request.query.get("limit") == str(kube.PAGE_SIZE)
        token = request.query.get("continue")
        if token is None:
            return pod_list([POD_A], continue_token="abc")
        if token == "abc":
            return pod_list([pod("pod-b", "10.244.1.6", "7")])
        return web.json_response(status(400, "BadRequest", f"unknown continue {token!r}"), status=400)

    async def scripted(api: FakeApi, request: web.Request, n: int) -> web.StreamResponse:
        if n > 1:
            return await stream(api, request, [], then="hold")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        while (line := await events.get()) is not None:
            await response.write(line)
        await response.write_eof()  # the server's timeoutSeconds ran out: a routine end
        return response

    async def scenario() -> None:
        api = FakeApi(on_list=two_pages, on_watch=scripted)
        async with reflecting(api) as running:
            cache = running.cache
            await eventually(lambda: len(api.watches) == 1, "the first watch")
            assert [seen.query.get("continue") for seen in api.lists] == [None, "abc"]
            assert running.stats.synced
            assert cache.count(POD) == 2
            assert running.owner("10.244.1.5") == owner_of("pod-a")
            assert running.owner("10.244.1.6") == owner_of("pod-b")
            first = api.watches[0].query
            assert first.get("resourceVersion") == LIST_RV
            assert first.get("allowWatchBookmarks", "").lower() == "true"

            events.put_nowait(event("ADDED", pod("pod-c", "10.244.1.7", "11")))
            await eventually(lambda: running.owner("10.244.1.7") == owner_of("pod-c"), "pod-c added")
            assert cache.count(POD) == 3

            events.put_nowait(event("MODIFIED", pod("pod-a", "10.244.1.5", "12", app="api")))
            await eventually(lambda: running.owner("10.244.1.5").app == "api", "pod-a relabelled")
            assert cache.count(POD) == 3

            events.put_nowait(event("DELETED", pod("pod-b", "10.244.1.6", "13")))
            await eventually(lambda: cache.count(POD) == 2, "pod-b deleted")
            assert cache.lingering == 1
            assert running.owner("10.244.1.6") == owner_of("pod-b")  # lingers for its grace period

            events.put_nowait(bookmark("20"))
            events.put_nowait(None)
            await eventually(lambda: len(api.watches) == 2, "the second watch")
            assert api.watches[1].query.get("resourceVersion") == "20"
            stats = running.stats
            assert stats.watch_starts == {reasons.INITIAL: 1, reasons.CLOSED: 1}
            assert not stats.errors
            assert stats.last_error is None
            assert len(api.lists) == 2  # no relist
            assert running.alive()

    run(scenario())


def test_a_stream_cut_mid_way_is_counted_and_resumed_without_a_relist() -> None:
    resumes_after_a_broken_first_stream([], "break", "connection", "watch stream broke")


# A watch that fails the same way every time: not an outage, so readiness says so.


async def readline_before_3_13_4(self: aiohttp.StreamReader) -> bytes:
    """StreamReader.readline exactly as aiohttp released it up to 3.13.3 (which kubernetes-asyncio's range allows):
    it takes no max_line_length, so the watch's call raises TypeError on every attempt."""
    return await self.readuntil()


def test_a_watch_failing_on_every_attempt_turns_readiness_red(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiohttp.StreamReader, "readline", readline_before_3_13_4)

    async def scenario() -> None:
        async with reflecting(FakeApi()) as running:
            stats = running.stats
            await eventually(
                lambda: stats.crashes_in_a_row >= reasons.CRASHES_BEFORE_UNREADY, "watches crashing", timeout=8
            )
            assert stats.synced  # the list worked: what it said is still served
            assert running.owner("10.244.1.5") == owner_of("pod-a")
            assert stats.errors["watch", "internal"] == stats.crashes_in_a_row  # khan_kube_api_errors_total
            assert len(running.api.lists) == 1  # the watch is retried (with backoff), not the list
            reason = running.all_stats.not_ready_reason()
            assert reason is not None
            assert "the watch of pods fails on every attempt (" in reason
            assert "TypeError" in reason
            assert "max_line_length" in reason
            assert running.alive()

    run(scenario())
