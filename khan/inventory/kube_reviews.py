"""TokenReviews and SubjectAccessReviews for `--auth kubernetes`, asked of the API with the agent's own
configuration and credentials, through a transport of their own."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog

from khan.inventory.api_config import ApiConfig
from khan.inventory.kube_transport import KubeTransport, connect
from khan.inventory.watch_protocol import TransportError

log = structlog.get_logger("khan.kube")

API_GROUPS = {"TokenReview": "authentication.k8s.io/v1", "SubjectAccessReview": "authorization.k8s.io/v1"}


class ReviewError(Exception):
    """A review was not created: the API is unreachable, or refused (for example no `create` permission)."""


class ReviewClient:
    """Reviews as the agent's own identity (in-cluster or --kubeconfig), on a client of their own: reviews never
    queue behind the inventory's watches."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self._transport: KubeTransport | None = None

    async def start(self) -> None:
        """Load the configuration; raises ApiConfigError. No request is made yet."""
        self._transport = await connect(self.config)
        log.info("auth_reviews", host=self._transport.host, config=self.config.origin)

    async def review(self, kind: str, spec: Mapping[str, Any], timeout: float) -> Mapping[str, Any]:
        """The created review's `status`; ReviewError if the API did not create it."""
        assert self._transport is not None, "start() first"
        body = {"apiVersion": API_GROUPS[kind], "kind": kind, "spec": dict(spec)}
        try:
            code, data = await self._transport.create_review(kind, body, timeout)
        except TransportError as exc:
            raise ReviewError(str(exc)) from exc
        if code not in (200, 201):
            raise ReviewError(f"{kind}: {code} {data[:300].decode(errors='replace')}")
        try:
            status = json.loads(data).get("status") or {}
        except (ValueError, AttributeError) as exc:
            raise ReviewError(f"{kind}: not a review object") from exc
        if not isinstance(status, dict):
            raise ReviewError(f"{kind}: not a review object")
        return status

    async def close(self) -> None:
        if self._transport is not None:
            await self._transport.close()
            self._transport = None
