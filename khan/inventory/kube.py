"""The inventory from the Kubernetes API: list, then watch, Pods, Services and Nodes cluster-wide.

Three layers: `kube_transport` (the only user of kubernetes_asyncio: connecting, requests, streams, typed
outcomes), `reflector` (one resource's list-then-watch state machine over those outcomes) and, here,
`ApiInventory`, which runs one reflector per resource into a `WatchCache` and renews the credentials.
"""

from __future__ import annotations

import asyncio

import structlog

from khan.inventory.api_config import ApiConfig
from khan.inventory.index import Inventory
from khan.inventory.kube_transport import KubeTransport, connect
from khan.inventory.reflector import RESOURCES, Reflector
from khan.inventory.watch_cache import WatchCache
from khan.inventory.watch_protocol import ApiStatusError, ProtocolError, TransportError
from khan.inventory.watch_stats import WatchStats

log = structlog.get_logger("khan.kube")

CREDENTIALS_RETRY_SECONDS = 60


class ListError(Exception):
    """A one-off list (`khan snapshot`) failed; the message names the resource, the server and the error."""


class ApiInventory:
    """Pods, Services and Nodes from the API, kept current by three reflectors."""

    def __init__(self, config: ApiConfig, deleted_pod_grace_seconds: float, watch_timeout_seconds: float) -> None:
        self.config = config
        self.cache = WatchCache(deleted_pod_grace_seconds)
        self.stats = WatchStats(tuple(RESOURCES.values()))
        self._watch_timeout = watch_timeout_seconds
        self._transport: KubeTransport | None = None
        self._synced = asyncio.Event()

    async def start(self) -> None:
        """Load the configuration; raises ApiConfigError. No request is made yet."""
        self._transport = await connect(self.config)
        log.info("kubernetes_api", host=self._transport.host, config=self.config.origin, path=self.config.kubeconfig)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the cache current until `stop` is set."""
        reflectors = self._reflectors()
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
        if self._transport is None or not self._transport.refreshes_credentials:
            return
        while True:
            try:
                await self._transport.refresh_credentials()
                return  # nothing to refresh: a static token or client certificate
            except Exception as exc:
                log.warning("credentials_refresh_failed", error=repr(exc), retry_in_seconds=CREDENTIALS_RETRY_SECONDS)
                await asyncio.sleep(CREDENTIALS_RETRY_SECONDS)

    async def list_once(self) -> None:
        """One list of each resource, for `khan snapshot`; raises ListError on the first failure."""
        assert self._transport is not None, "start() first"
        host = self._transport.host

        async def list_one(reflector: Reflector) -> None:
            try:
                await reflector.list_once()
            except (ApiStatusError, TransportError, ProtocolError) as exc:
                raise ListError(f"cannot list {reflector.resource} from {host}: {exc}") from exc

        try:
            reflectors = self._reflectors()
            outcomes = await asyncio.gather(*(list_one(reflector) for reflector in reflectors), return_exceptions=True)
        finally:
            await self.close()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None

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

    def _reflectors(self) -> list[Reflector]:
        assert self._transport is not None, "start() first"
        return [
            Reflector(kind, self._transport, self.cache, self.stats, self._watch_timeout, self._check_synced)
            for kind in RESOURCES
        ]

    def _check_synced(self) -> None:
        if not self.stats.unsynced():
            self._synced.set()
