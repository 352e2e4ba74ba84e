"""The inventory from the Kubernetes API: list, then watch, Pods, Services and Nodes cluster-wide.

One reflector per resource keeps `WatchCache` current. The only module that imports kubernetes_asyncio (about
70 MB and 2 s); it is used for configuration, authentication (token refresh included) and the HTTP session,
while lists and events are read as raw JSON so that no generated model object is ever built.

A reflector never gives up: a failed request is retried after a backoff (the server's Retry-After is obeyed), a
410 Gone lists the resource again and replaces what was known of it in one step, and a stream on which nothing
arrives for too long is dropped and resumed. Meanwhile the cache keeps the last known state.

`ReviewClient` is here for the same reason: `--auth kubernetes` asks the API (TokenReview, SubjectAccessReview)
with the agent's own configuration and credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from khan.inventory import watch_stats as reasons
from khan.inventory.api_config import ApiConfig, ApiConfigError
from khan.inventory.backoff import Backoff
from khan.inventory.index import Inventory
from khan.inventory.objects import NODE, POD, SERVICE, ObjectKey, Projection, project
from khan.inventory.watch_cache import WatchCache
from khan.inventory.watch_protocol import (
    GONE,
    ApiStatusError,
    ProtocolError,
    parse_event,
    parse_list_page,
    status_error,
)
from khan.inventory.watch_stats import WatchStats

log = structlog.get_logger("khan.kube")

RESOURCES: dict[str, str] = {POD: "pods", SERVICE: "services", NODE: "nodes"}  # kind -> resource
PAGE_SIZE = 500  # objects per list page: 50,000 pods arrive in 100 requests of about 1 MB each
PAGE_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10)
# Most bytes one watch event may take: etcd stores objects of up to 1.5 MiB; JSON can double that.
MAX_EVENT_BYTES = 16 * 2**20
# TCP keepalive on a watch connection: a peer gone without a word (a partitioned node) is noticed in about a
# minute instead of at the end of the inactivity limit.
KEEPALIVE_IDLE_SECONDS, KEEPALIVE_INTERVAL_SECONDS, KEEPALIVE_PROBES = 30, 10, 3
# Before Kubernetes 1.27 a quiet resource gets no bookmark until its watch is about to end, so a stream is
# declared dead only when it has been silent past the server-side timeout plus this margin (or plus the timeout
# itself, if that is shorter).
INACTIVITY_MARGIN_SECONDS = 30.0
# A stream that ends sooner than this without delivering anything is treated as a failure (backoff), so that a
# proxy cutting streams at once cannot make the agent spin.
SHORT_STREAM_SECONDS = 1.0

Request = Callable[..., Awaitable[Any]]


class TransportError(Exception):
    """The request never got an HTTP answer, or its stream broke; `code` is "connection" or "timeout"."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class ListError(Exception):
    """A one-off list (`khan snapshot`) failed; the message names the resource, the server and the error."""


async def connect(config: ApiConfig) -> tuple[k8s.ApiClient, Any]:
    """An API client for `config` and its kubeconfig loader (None in-cluster); ApiConfigError (one clear line)
    if the configuration cannot be used."""
    configuration = k8s.Configuration()
    loader: Any = None
    try:
        if config.kubeconfig is None:
            # Installs a hook that re-reads the (rotated, bound) service account token before requests.
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            loader = await k8s_config.load_kube_config(
                config_file=config.kubeconfig, client_configuration=configuration, persist_config=False
            )
        return k8s.ApiClient(configuration), loader  # builds the TLS context: a bad CA file fails here
    except (ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        where = "the in-cluster service account" if config.in_cluster else f"{config.origin} {config.kubeconfig}"
        raise ApiConfigError(f"cannot use {where}: {exc}") from exc


def _keep_alive(response: aiohttp.ClientResponse) -> None:
    """TCP keepalive on the watch's connection (best effort: a platform without the options keeps the default)."""
    connection = response.connection
    sock = connection.transport.get_extra_info("socket") if connection and connection.transport else None
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def list_calls(api_client: k8s.ApiClient) -> dict[str, Request]:
    core = k8s.CoreV1Api(api_client)
    return {
        POD: core.list_pod_for_all_namespaces,
        SERVICE: core.list_service_for_all_namespaces,
        NODE: core.list_node,
    }


class Reflector:
    """Lists one resource, then watches it from the list's resourceVersion, for ever."""

    def __init__(
        self,
        kind: str,
        call: Request,
        cache: WatchCache,
        stats: WatchStats,
        watch_timeout_seconds: float,
        on_synced: Callable[[], None] = lambda: None,
    ) -> None:
        self.kind = kind
        self.resource = RESOURCES[kind]
        self._call = call
        self._cache = cache
        self._all_stats = stats
        self._stats = stats[self.resource]
        self._watch_timeout = max(1.0, watch_timeout_seconds)
        self._on_synced = on_synced
        self._resource_version = ""
        self._backoff = Backoff()

    async def list_once(self) -> None:
        """Every object, page by page, replacing what the cache knew of this kind in one step."""
        projections: dict[ObjectKey, Projection] = {}
        skipped = 0
        continue_token = ""
        while True:
            params: dict[str, Any] = {"limit": PAGE_SIZE}
            if continue_token:
                params["_continue"] = continue_token
            body = await self._read("list", PAGE_TIMEOUT, **params)
            try:
                page = parse_list_page(body)
            except ProtocolError:
                self._stats.errors["list", "invalid"] += 1
                raise
            for item in page.items:
                projection = project(item, default_kind=self.kind)
                if projection is None:
                    skipped += 1
                else:
                    projections[projection.key] = projection
            continue_token = page.continue_token
            if not continue_token:
                break
        self._cache.replace(self.kind, projections)
        self._resource_version = page.resource_version
        self._heard()
        if skipped:
            log.warning("objects_skipped", resource=self.resource, skipped=skipped, reason="no name or wrong shape")
        if not self._stats.synced:
            self._stats.synced = True
            log.info("inventory_listed", resource=self.resource, objects=len(projections))
            self._on_synced()

    async def run(self) -> None:
        """List and watch until cancelled; every failure is counted, logged once and retried."""
        reason = reasons.INITIAL
        must_list = True
        watched = False  # until a first watch starts, failures of the first lists do not change its reason
        while True:
            delay = 0.0
            detail: str | None = None
            try:
                if must_list:
                    await self.list_once()
                    must_list = False
                self._stats.watch_starts[reason if watched else reasons.INITIAL] += 1
                watched = True
                reason, delivered, lasted = await self._watch()
                self._stats.crashes_in_a_row = 0
                # Only a watch that worked clears the backoff: a list that succeeds before every 410 does not.
                if delivered:
                    self._backoff.reset()
                if reason != reasons.CLOSED or (not delivered and lasted < SHORT_STREAM_SECONDS):
                    delay = self._backoff.next_delay()
            except ApiStatusError as exc:
                self._stats.last_error = f"{exc.code} {exc.message}"
                detail = self._stats.last_error
                if exc.code == GONE:
                    reason, must_list = reasons.EXPIRED, True
                    # Counted as a failure either way; only the first relist in a row goes at once.
                    first = self._backoff.failures == 0
                    delay = self._backoff.next_delay()
                    if first:
                        delay = 0.0
                else:
                    reason = reasons.ERROR
                    delay = self._backoff.next_delay(exc.retry_after)
            except (TransportError, ProtocolError) as exc:
                self._stats.last_error = str(exc)
                detail = self._stats.last_error
                reason = reasons.ERROR
                delay = self._backoff.next_delay()
            except Exception as exc:  # a bug or a library surprise must not end the watch for good: retry it
                log.exception("watch_crashed", resource=self.resource, error=repr(exc))
                self._stats.errors["watch", "internal"] += 1
                self._stats.crashes_in_a_row += 1  # past CRASHES_BEFORE_UNREADY, /readyz says so
                self._stats.last_error = repr(exc)
                detail = self._stats.last_error
                reason = reasons.ERROR
                delay = self._backoff.next_delay()
            self._log_restart(reason, must_list, delay, detail)
            if delay:
                await asyncio.sleep(delay)

    async def _watch(self) -> tuple[str, bool, float]:
        """One watch stream: (why it ended, whether it delivered anything, how long it lasted)."""
        started = time.monotonic()
        # Between half and all of --watch-timeout, so that agents started together do not reconnect together.
        timeout = max(1, round(self._watch_timeout * (0.5 + random.random() / 2)))
        inactivity = timeout + min(INACTIVITY_MARGIN_SECONDS, timeout)
        # sock_read bounds the wait for the headers too; the stream as a whole has no limit but the server's.
        client_timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=inactivity)
        response = await self._open(
            "watch",
            client_timeout,
            watch=True,
            resource_version=self._resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
        )
        _keep_alive(response)
        delivered = False
        try:
            while True:
                try:
                    line = await response.content.readline(max_line_length=MAX_EVENT_BYTES)
                except TimeoutError:  # aiohttp's sock_read timeout
                    return reasons.INACTIVE, delivered, time.monotonic() - started
                except (aiohttp.ClientError, OSError, HttpProcessingError, ValueError) as exc:
                    self._stats.errors["watch", "connection"] += 1
                    raise TransportError("connection", f"watch stream broke: {_describe(exc)}") from exc
                if not line:
                    return reasons.CLOSED, delivered, time.monotonic() - started
                if not line.strip():
                    continue
                try:
                    self._handle(line)
                except ApiStatusError as exc:
                    self._stats.errors["watch", str(exc.code)] += 1
                    raise
                except ProtocolError:
                    self._stats.errors["watch", "invalid"] += 1
                    raise
                delivered = True
        finally:
            response.close()

    def _handle(self, line: bytes) -> None:
        event = parse_event(line)
        if event.resource_version:
            self._resource_version = event.resource_version
        self._heard()
        if event.type == "BOOKMARK":
            return
        projection = project(event.object, default_kind=self.kind)
        if projection is None:
            log.debug("event_skipped", resource=self.resource, type=event.type)
            return
        self._cache.apply(event.type, projection)

    async def _read(self, verb: str, timeout: aiohttp.ClientTimeout, **params: Any) -> bytes:
        response = await self._open(verb, timeout, **params)
        try:
            return bytes(await response.read())
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            code = "timeout" if isinstance(exc, TimeoutError) else "connection"
            self._stats.errors[verb, code] += 1
            raise TransportError(code, f"{verb} {self.resource}: {_describe(exc)}") from exc
        finally:
            response.release()

    async def _open(self, verb: str, timeout: aiohttp.ClientTimeout, **params: Any) -> aiohttp.ClientResponse:
        """The response to a list or watch request, once its status says success."""
        try:
            response: aiohttp.ClientResponse = await self._call(
                _preload_content=False, _request_timeout=timeout, **params
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            code = "timeout" if isinstance(exc, TimeoutError) else "connection"
            self._stats.errors[verb, code] += 1
            raise TransportError(code, f"{verb} {self.resource}: {_describe(exc)}") from exc
        if response.status == 200:
            return response
        self._stats.errors[verb, str(response.status)] += 1
        try:
            body = await response.content.read(64 * 1024)  # a Status object; enough for its message
        except (aiohttp.ClientError, OSError, TimeoutError):
            body = b""
        finally:
            response.release()
        raise status_error(response.status, response.reason or "", body, response.headers.get("Retry-After"))

    def _heard(self) -> None:
        self._all_stats.heard(self.resource)

    def _log_restart(self, reason: str, relist: bool, delay: float, detail: str | None) -> None:
        context: dict[str, object] = {"resource": self.resource, "reason": reason, "retry_in_seconds": round(delay, 2)}
        if relist:
            context["relist"] = True
        if detail:
            context["error"] = detail
        if reason == reasons.CLOSED:
            log.debug("watch_restart", **context)  # routine: the server ends every stream after its timeout
        else:
            log.warning("watch_restart", **context)


class ApiInventory:
    """Pods, Services and Nodes from the API, kept current by three reflectors."""

    def __init__(self, config: ApiConfig, deleted_pod_grace_seconds: float, watch_timeout_seconds: float) -> None:
        self.config = config
        self.cache = WatchCache(deleted_pod_grace_seconds)
        self.stats = WatchStats(tuple(RESOURCES.values()))
        self._watch_timeout = watch_timeout_seconds
        self._client: k8s.ApiClient | None = None
        self._loader: Any = None
        self._synced = asyncio.Event()

    async def start(self) -> None:
        """Load the configuration; raises ApiConfigError. No request is made yet."""
        self._client, self._loader = await connect(self.config)
        host = self._client.configuration.host
        log.info("kubernetes_api", host=host, config=self.config.origin, path=self.config.kubeconfig)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the cache current until `stop` is set."""
        assert self._client is not None, "start() first"
        reflectors = [self._reflector(kind, call) for kind, call in list_calls(self._client).items()]
        tasks = [asyncio.create_task(reflector.run(), name=f"watch-{reflector.resource}") for reflector in reflectors]
        tasks.append(asyncio.create_task(self._refresh_credentials(), name="refresh-credentials"))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()

    async def _refresh_credentials(self) -> None:
        """Renew a kubeconfig's exec-plugin or GCP token before it expires (kubernetes_asyncio checks every
        minute); a failure is logged and tried again. In-cluster tokens renew through a hook instead."""
        if self._loader is None or self._client is None:
            return
        while True:
            try:
                await k8s_config.refresh_token(self._loader, self._client.configuration)
                return  # nothing to refresh: a static token or client certificate
            except Exception as exc:
                log.warning("credentials_refresh_failed", error=repr(exc), retry_in_seconds=60)
                await asyncio.sleep(60)

    async def list_once(self) -> None:
        """One list of each resource, for `khan snapshot`; raises ListError on the first failure."""
        assert self._client is not None, "start() first"
        host = self._client.configuration.host

        async def list_one(reflector: Reflector) -> None:
            try:
                await reflector.list_once()
            except (ApiStatusError, TransportError, ProtocolError) as exc:
                raise ListError(f"cannot list {reflector.resource} from {host}: {exc}") from exc

        try:
            reflectors = [self._reflector(kind, call) for kind, call in list_calls(self._client).items()]
            outcomes = await asyncio.gather(*(list_one(reflector) for reflector in reflectors), return_exceptions=True)
        finally:
            await self.close()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def current(self) -> Inventory:
        return self.cache.inventory()

    def watch_stats(self) -> WatchStats | None:
        return self.stats

    def deleted_pods(self) -> int:
        return self.cache.lingering

    def not_ready_reason(self) -> str | None:
        return self.stats.not_ready_reason()

    def _reflector(self, kind: str, call: Request) -> Reflector:
        return Reflector(kind, call, self.cache, self.stats, self._watch_timeout, self._check_synced)

    def _check_synced(self) -> None:
        if not self.stats.unsynced():
            self._synced.set()


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class ReviewClient:
    """TokenReviews and SubjectAccessReviews for `--auth kubernetes`, as the agent's own identity (in-cluster or
    --kubeconfig), on a client of their own: reviews never queue behind the inventory's watches."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self._client: k8s.ApiClient | None = None
        self._calls: dict[str, Request] = {}

    async def start(self) -> None:
        """Load the configuration; raises ApiConfigError. No request is made yet."""
        self._client, _ = await connect(self.config)
        self._calls = {
            "TokenReview": k8s.AuthenticationV1Api(self._client).create_token_review,
            "SubjectAccessReview": k8s.AuthorizationV1Api(self._client).create_subject_access_review,
        }
        log.info("auth_reviews", host=self._client.configuration.host, config=self.config.origin)

    async def review(self, kind: str, spec: Mapping[str, Any], timeout: float) -> Mapping[str, Any]:
        """The created review's `status`; ReviewError if the API did not create it."""
        group = "authentication.k8s.io/v1" if kind == "TokenReview" else "authorization.k8s.io/v1"
        body = {"apiVersion": group, "kind": kind, "spec": dict(spec)}
        try:
            response: aiohttp.ClientResponse = await self._calls[kind](
                body, _preload_content=False, _request_timeout=aiohttp.ClientTimeout(total=timeout)
            )
            try:
                data = await response.read()
            finally:
                response.release()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ReviewError(f"{kind}: {_describe(exc)}") from exc
        if response.status not in (200, 201):
            raise ReviewError(f"{kind}: {response.status} {data[:300].decode(errors='replace')}")
        try:
            status = json.loads(data).get("status") or {}
        except (ValueError, AttributeError) as exc:
            raise ReviewError(f"{kind}: not a review object") from exc
        if not isinstance(status, dict):
            raise ReviewError(f"{kind}: not a review object")
        return status

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class ReviewError(Exception):
    """A review was not created: the API is unreachable, or refused (for example no `create` permission)."""
