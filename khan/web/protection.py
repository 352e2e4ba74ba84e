"""Settings -> how the HTTP server is protected: its TLS context and its authentication middleware.

All off by default (`khan agent` on a laptop serves plain HTTP to anyone); deploy/ turns on TLS and
`--auth kubernetes`. Everything is checked here, before the listener opens: a bad file is one line at start.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import structlog

from khan.inventory.api_config import ApiConfigError, find_api_config
from khan.settings import Settings
from khan.web.auth import BasicAuth, KubernetesAuth, auth_middleware
from khan.web.tls import ReloadingTls, TlsError, self_signed
from khan.web.web_config import WebConfig, WebConfigError, load_web_config

log = structlog.get_logger("khan.protection")


class ProtectionError(Exception):
    """TLS or authentication cannot be set up as asked; one line."""


@dataclass
class Protection:
    ssl_context: ssl.SSLContext | None = None
    middlewares: list[Any] = field(default_factory=list)
    tls: ReloadingTls | None = None  # when the certificate comes from files (and is reloaded)
    reviews: Any = None  # the API client of --auth kubernetes, closed with the server
    # What agent_started says of it: logged once serving starts, so that a failed start stays one line.
    summary: dict[str, object] = field(default_factory=lambda: {"tls": "off", "basic_auth_users": 0, "auth": "none"})

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    async def close(self) -> None:
        if self.reviews is not None:
            await self.reviews.close()
            self.reviews = None


async def protection_for(settings: Settings) -> Protection:
    """ProtectionError for a bad web configuration, unloadable certificates or an unusable API configuration."""
    try:
        web_config = load_web_config(settings.web_config_file) if settings.web_config_file else WebConfig()
    except WebConfigError as exc:
        raise ProtectionError(str(exc)) from None
    if settings.tls_self_signed and web_config.tls is not None:
        raise ProtectionError("--tls-self-signed and a tls_server_config in --web-config-file: choose one")
    protection = Protection()
    try:
        if web_config.tls is not None:
            protection.tls = ReloadingTls(web_config.tls)
            protection.ssl_context = protection.tls.listener
        elif settings.tls_self_signed:
            protection.ssl_context = self_signed(settings.node_name)
    except TlsError as exc:
        raise ProtectionError(str(exc)) from None
    basic = BasicAuth(web_config.basic_auth_users) if web_config.basic_auth_users else None
    kubernetes = None
    if settings.auth == "kubernetes":
        protection.reviews = await _review_client(settings)
        kubernetes = KubernetesAuth(protection.reviews)
    if basic is not None or kubernetes is not None:
        protection.middlewares.append(auth_middleware(basic, kubernetes))
    if protection.middlewares and protection.ssl_context is None:
        log.warning("credentials_over_plain_http", fix="add --tls-self-signed or a tls_server_config")
    protection.summary = {
        "tls": "files" if protection.tls else ("self-signed" if settings.tls_self_signed else "off"),
        "basic_auth_users": len(web_config.basic_auth_users),
        "auth": settings.auth,
    }
    return protection


async def _review_client(settings: Settings) -> Any:
    """The agent's own API identity (in-cluster or --kubeconfig), also when the inventory comes from a file."""
    try:
        config = find_api_config(settings.kubeconfig)
    except ApiConfigError as exc:
        raise ProtectionError(f"--auth kubernetes: {exc}") from None
    if config is None:
        raise ProtectionError("--auth kubernetes needs the Kubernetes API: run in a cluster or give --kubeconfig")
    from khan.inventory.kube_reviews import ReviewClient  # the client library only when reviews are asked for

    client = ReviewClient(config)
    try:
        await client.start()
    except ApiConfigError as exc:
        raise ProtectionError(f"--auth kubernetes: {exc}") from None
    return client
