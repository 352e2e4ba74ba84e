"""The wire to the Kubernetes API: the only module that imports kubernetes_asyncio or uses aiohttp's client.
kubernetes_asyncio gives the configuration, authentication (token refresh included) and the HTTP session; lists and
events are read as raw bytes so that no generated model object is ever built, and its generated API classes and
models are never even imported (see `_library`): they are 36 MB of the agent's RSS.

Every request ends in a typed outcome: a list page's bytes, a watch stream's lines and then `StreamEnd.CLOSED` or
`StreamEnd.SILENT`, a review's status and body, or one error: `TransportError` ("connection" or "timeout") when
no HTTP answer came or the stream broke, `ApiStatusError` when the server refused the request.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import socket
import sys
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from khan.inventory.api_config import ApiConfig, ApiConfigError
from khan.inventory.watch_protocol import StreamEnd, TransportError, status_error
from khan.lean_imports import register_unexecuted

if TYPE_CHECKING:  # at run time, through _library() only
    from kubernetes_asyncio.client.api_client import ApiClient

PAGE_TIMEOUT = aiohttp.ClientTimeout(total=60, connect=10)
# Most bytes one watch event may take: etcd stores objects of up to 1.5 MiB; JSON can double that.
MAX_EVENT_BYTES = 16 * 2**20
# TCP keepalive on a watch connection: a peer gone without a word (a partitioned node) is noticed in about a
# minute instead of at the end of the inactivity limit.
KEEPALIVE_IDLE_SECONDS, KEEPALIVE_INTERVAL_SECONDS, KEEPALIVE_PROBES = 30, 10, 3
STATUS_BODY_BYTES = 64 * 1024  # of a refused request's Status object: enough for its message

# What the client library raises when a request got no answer, and when a stream being read broke (a line over
# MAX_EVENT_BYTES, a chunk that is not HTTP). Anything else is a bug or a library surprise, left to the caller.
_REQUEST_FAILURES = (aiohttp.ClientError, OSError, TimeoutError)
_STREAM_FAILURES = (aiohttp.ClientError, OSError, HttpProcessingError, ValueError)

Request = Callable[..., Awaitable[Any]]


def failure(what: str, exc: BaseException) -> TransportError:
    """The one mapping of the client library's failures to codes: a timeout, or a connection that failed or broke."""
    code = "timeout" if isinstance(exc, TimeoutError) else "connection"
    return TransportError(code, f"{what}: {str(exc) or type(exc).__name__}")


# kubernetes_asyncio's package __init__ files import every generated API class and model (about 1,100 modules,
# 36 MB of RSS); khan needs only the ApiClient, its Configuration and the config loaders. So the three packages are
# registered without running their __init__ and those modules are imported one by one, in this order: each one's
# `from package import Name` must find the name already set. Should anything else in the process ask one of these
# packages for a name it lacks, the package's real __init__ runs then and answers.
_LEAN_PACKAGES = ("kubernetes_asyncio", "kubernetes_asyncio.client", "kubernetes_asyncio.client.models")
_CLIENT_MODULES = ("exceptions", "configuration", "rest", "api_client")
# Configuration imports urllib3 only to build basic-auth headers (khan authenticates with tokens and certificates):
# it too is registered unexecuted (2 MB) unless something imported it already, and loads in full on first use.
_LAZY_DEPENDENCIES = ("urllib3",)
# The paths and Accept header the generated CoreV1Api, AuthenticationV1Api and AuthorizationV1Api use.
_PATHS = {
    "pods": "/api/v1/pods",
    "services": "/api/v1/services",
    "nodes": "/api/v1/nodes",
    "TokenReview": "/apis/authentication.k8s.io/v1/tokenreviews",
    "SubjectAccessReview": "/apis/authorization.k8s.io/v1/subjectaccessreviews",
}
_ACCEPT = {"Accept": "application/json"}


def _library() -> types.ModuleType:
    """kubernetes_asyncio.config, with the client modules it needs and none of the generated ones."""
    if "kubernetes_asyncio" not in sys.modules:
        for name in _LEAN_PACKAGES:
            register_unexecuted(name)
        for name in _LAZY_DEPENDENCIES:
            if name not in sys.modules:
                register_unexecuted(name)
        client: Any = sys.modules["kubernetes_asyncio.client"]
        for name in _CLIENT_MODULES:
            importlib.import_module(f"kubernetes_asyncio.client.{name}")
        client.Configuration = client.configuration.Configuration
        client.ApiClient = client.api_client.ApiClient
    return importlib.import_module("kubernetes_asyncio.config")


async def connect(config: ApiConfig) -> KubeTransport:
    """A transport for `config`; ApiConfigError (one clear line) if the configuration cannot be used."""
    k8s_config = _library()
    client: Any = sys.modules["kubernetes_asyncio.client"]
    configuration = client.Configuration()
    loader: Any = None
    try:
        if config.kubeconfig is None:
            # Installs a hook that re-reads the (rotated, bound) service account token before requests.
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            loader = await k8s_config.load_kube_config(
                config_file=config.kubeconfig, client_configuration=configuration, persist_config=False
            )
        return KubeTransport(client.ApiClient(configuration), loader)  # builds the TLS context: a bad CA fails here
    except (k8s_config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        where = "the in-cluster service account" if config.in_cluster else f"{config.origin} {config.kubeconfig}"
        raise ApiConfigError(f"cannot use {where}: {exc}") from exc


class WatchStream:
    """The lines of one open watch answer."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._content = response.content

    async def next_line(self) -> bytes | StreamEnd:
        """The next non-blank line, or how the stream ended; TransportError if it broke."""
        while True:
            try:
                line = await self._content.readline(max_line_length=MAX_EVENT_BYTES)
            except TimeoutError:  # aiohttp's sock_read timeout: the inactivity limit
                return StreamEnd.SILENT
            except _STREAM_FAILURES as exc:
                raise failure("watch stream broke", exc) from exc
            if not line:
                return StreamEnd.CLOSED
            if line.strip():
                return line


class KubeTransport:
    """One API client: list pages and watch streams of pods, services and nodes, and reviews."""

    def __init__(self, api_client: ApiClient, loader: Any = None) -> None:
        self._client = api_client
        self._loader = loader  # a kubeconfig's loader, for its token refresh; None in-cluster

    @property
    def host(self) -> str:
        return str(self._client.configuration.host)

    @property
    def refreshes_credentials(self) -> bool:
        """Whether a kubeconfig's exec-plugin or GCP token may need renewing (in-cluster tokens renew by a hook)."""
        return self._loader is not None

    async def refresh_credentials(self) -> None:
        """Renew the token before it expires; returns when there is nothing (more) to refresh, raises on failure."""
        await _library().refresh_token(self._loader, self._client.configuration)

    async def list_page(self, resource: str, limit: int, continue_token: str) -> bytes:
        params: list[tuple[str, Any]] = [("continue", continue_token)] if continue_token else []
        response = await self._open("list", resource, PAGE_TIMEOUT, [*params, ("limit", limit)])
        try:
            return bytes(await response.read())
        except _REQUEST_FAILURES as exc:
            raise failure(f"list {resource}", exc) from exc
        finally:
            response.release()

    @contextlib.asynccontextmanager
    async def watch(
        self, resource: str, resource_version: str, timeout_seconds: int, inactivity_seconds: float
    ) -> AsyncIterator[WatchStream]:
        """A watch from `resource_version`, which the server ends after `timeout_seconds`; a stream silent for
        `inactivity_seconds` ends as StreamEnd.SILENT."""
        # sock_read bounds the wait for the headers too; the stream as a whole has no limit but the server's.
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=inactivity_seconds)
        params = [
            ("allowWatchBookmarks", True),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", timeout_seconds),
            ("watch", True),
        ]
        response = await self._open("watch", resource, timeout, params)
        _keep_alive(response)
        try:
            yield WatchStream(response)
        finally:
            response.close()

    async def create_review(self, kind: str, body: Mapping[str, Any], timeout: float) -> tuple[int, bytes]:
        """The HTTP status and body of the answer to creating a TokenReview or SubjectAccessReview."""
        try:
            response = await self._call("POST", kind, [], aiohttp.ClientTimeout(total=timeout), body)
            try:
                return response.status, bytes(await response.read())
            finally:
                response.release()
        except _REQUEST_FAILURES as exc:
            raise failure(kind, exc) from exc

    async def close(self) -> None:
        await self._client.close()

    async def _call(
        self, method: str, what: str, params: list[tuple[str, Any]], timeout: aiohttp.ClientTimeout, body: Any = None
    ) -> aiohttp.ClientResponse:
        """The unread response to one request, authenticated as the generated API classes do."""
        response: aiohttp.ClientResponse = await self._client.call_api(
            _PATHS[what],
            method,
            query_params=params,
            header_params=dict(_ACCEPT),
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        return response

    async def _open(
        self, verb: str, resource: str, timeout: aiohttp.ClientTimeout, params: list[tuple[str, Any]]
    ) -> aiohttp.ClientResponse:
        """The response to a list or watch request, once its status says success."""
        try:
            response = await self._call("GET", resource, params, timeout)
        except _REQUEST_FAILURES as exc:
            raise failure(f"{verb} {resource}", exc) from exc
        if response.status == 200:
            return response
        try:
            body = await response.content.read(STATUS_BODY_BYTES)
        except _REQUEST_FAILURES:
            body = b""
        finally:
            response.release()
        raise status_error(response.status, response.reason or "", body, response.headers.get("Retry-After"))


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
