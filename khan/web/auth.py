"""Who may read the agent: HTTP basic auth against bcrypt hashes (--web-config-file), and Kubernetes bearer
tokens (--auth kubernetes), checked as kube-rbac-proxy does in front of node-exporter: a TokenReview says who
the token belongs to, then a SubjectAccessReview asks whether that user may `get` the request's path as a
non-resource URL (RBAC `nonResourceURLs: ["/metrics"]`).

Answers are cached briefly (bounded, keyed by a hash of the credentials, never the credentials themselves), and
checked before the cap on requests in flight: a cached credential never waits behind unknown ones. An unknown
credential is checked only if a slot is free (bcrypt 2 at a time, reviews 8 at a time), else refused at once
with 503 and Retry-After: a flood of wrong credentials costs bounded work and never queues. Nothing fails open:
an API server that cannot answer means 503, never access.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog
from aiohttp import web
from cachetools import TTLCache

from khan.logs import RateLimiter

log = structlog.get_logger("khan.auth")

# The probes' endpoints: open to the kubelet, and they reveal nothing but ok / ready / not ready.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
CACHE_ENTRIES = 1024  # distinct (credentials, path) answers kept; a scraper needs one or two
BASIC_TTL_SECONDS = 60.0  # a right password is not re-hashed (50-250 ms of CPU) while used at least once a minute
BASIC_REFUSED_TTL_SECONDS = 10.0  # a wrong password repeated is refused without bcrypt for this long
ALLOWED_TTL_SECONDS = 60.0  # a revoked binding or token stops working within this long
DENIED_TTL_SECONDS = 10.0  # a fresh binding starts working within this long
REVIEW_TIMEOUT_SECONDS = 5.0
BCRYPT_AT_ONCE = 2  # bcrypt checks run in threads; more at once would only take CPU from the polls
REVIEWS_AT_ONCE = 8  # garbage tokens cannot turn into a flood of requests to the API server
# Tokens allowed within the last hour are reviewed again (their 60 s are up) in slots of their own: a flood of
# unknown tokens holding every shared slot cannot lock out a scraper that was allowed a minute ago.
RENEWALS_AT_ONCE = 2
KNOWN_TTL_SECONDS = 3600.0
RETRY_AFTER_SECONDS = "1"
BCRYPT_COST = re.compile(rb"\$2[aby]\$(\d\d)\$")
MIN_BCRYPT_COST, MAX_BCRYPT_COST = 4, 31  # what bcrypt accepts
# HTTP methods -> the verbs kube-rbac-proxy asks about; every khan route is GET or HEAD.
VERBS = {"GET": "get", "HEAD": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class Decision(enum.Enum):
    ALLOWED = enum.auto()
    UNAUTHENTICATED = enum.auto()
    FORBIDDEN = enum.auto()
    UNAVAILABLE = enum.auto()  # the API server cannot answer
    BUSY = enum.auto()  # every slot for checking an unknown credential is taken: try again shortly


def _take(slots: asyncio.Semaphore) -> bool:
    """A slot now or never: an unknown credential does not queue (acquire() does not wait when one is free)."""
    return not slots.locked()


class BasicAuth:
    """user:password against the web configuration's bcrypt hashes."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        # Checked in place of a missing user's hash, so that an unknown user takes as long as a wrong password.
        self._unknown_user_hash = unknown_user_hash(self._users.values())
        self._key = secrets.token_bytes(32)  # the caches' keys are a keyed hash: no offline guessing from memory
        self._verified: TTLCache[bytes, bool] = TTLCache(maxsize=CACHE_ENTRIES, ttl=BASIC_TTL_SECONDS)
        self._refused: TTLCache[bytes, bool] = TTLCache(maxsize=CACHE_ENTRIES, ttl=BASIC_REFUSED_TTL_SECONDS)
        self._slots = asyncio.Semaphore(BCRYPT_AT_ONCE)

    async def check(self, credentials: str) -> Decision:
        """`credentials` is the base64 part of an `Authorization: Basic` header."""
        try:
            user, sep, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return Decision.UNAUTHENTICATED
        if not sep:
            return Decision.UNAUTHENTICATED
        key = hmac.digest(self._key, f"{user}\0{password}".encode(), "sha256")
        if key in self._verified:
            self._verified[key] = True  # the users cannot change while the agent runs: a minute from last use
            return Decision.ALLOWED
        if key in self._refused:
            return Decision.UNAUTHENTICATED
        if not _take(self._slots):
            return Decision.BUSY
        hashed = self._users.get(user)
        async with self._slots:
            matches = await asyncio.to_thread(_bcrypt_matches, password.encode(), hashed or self._unknown_user_hash)
        if matches and hashed is not None:
            self._verified[key] = True
            return Decision.ALLOWED
        self._refused[key] = True
        return Decision.UNAUTHENTICATED


def unknown_user_hash(hashes: Iterable[bytes]) -> bytes:
    """A hash of a random password at the highest cost among the users' hashes (`$2b$12$...` costs 2^12): a fixed
    cost would tell apart the users whose cost differs from it."""
    import bcrypt

    costs = [int(found.group(1)) for hashed in hashes if (found := BCRYPT_COST.match(hashed))]
    cost = min(max([*costs, MIN_BCRYPT_COST]), MAX_BCRYPT_COST)
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    import bcrypt  # only basic auth pays for it

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # bcrypt refuses passwords over 72 bytes in recent releases: such a password is wrong
        return False


class ReviewApi(Protocol):
    async def review(self, kind: str, spec: Mapping[str, Any], timeout: float) -> Mapping[str, Any]:
        """Create a TokenReview or SubjectAccessReview; its `status`. Raises on anything but a 201 answer."""


class KubernetesAuth:
    """Bearer tokens, checked by the API server: TokenReview, then SubjectAccessReview."""

    def __init__(self, api: ReviewApi) -> None:
        self._api = api
        self._allowed: TTLCache[tuple[bytes, str, str], bool] = TTLCache(CACHE_ENTRIES, ALLOWED_TTL_SECONDS)
        self._denied: TTLCache[tuple[bytes, str, str], Decision] = TTLCache(CACHE_ENTRIES, DENIED_TTL_SECONDS)
        self._known: TTLCache[tuple[bytes, str, str], bool] = TTLCache(CACHE_ENTRIES, KNOWN_TTL_SECONDS)
        self._slots = asyncio.Semaphore(REVIEWS_AT_ONCE)
        self._renewals = asyncio.Semaphore(RENEWALS_AT_ONCE)
        self._warnings = RateLimiter(period=60.0)

    async def check(self, token: str, verb: str, path: str) -> Decision:
        key = (hashlib.sha256(token.encode()).digest(), verb, path)
        if self._allowed.get(key):
            return Decision.ALLOWED
        if (denied := self._denied.get(key)) is not None:  # unknown tokens too (TokenReview: not authenticated)
            return denied
        slots = self._renewals if key in self._known else self._slots
        if not _take(slots):
            return Decision.BUSY
        async with slots:
            decision = await self._review(token, verb, path)
        if decision is Decision.ALLOWED:
            self._allowed[key] = self._known[key] = True
        elif decision is not Decision.UNAVAILABLE:  # an outage is never remembered as a refusal
            self._denied[key] = decision
        return decision

    async def _review(self, token: str, verb: str, path: str) -> Decision:
        try:
            identity = await self._api.review("TokenReview", {"token": token}, REVIEW_TIMEOUT_SECONDS)
            if not identity.get("authenticated"):
                return Decision.UNAUTHENTICATED
            user = identity.get("user") or {}
            spec = {
                "user": user.get("username", ""),
                "uid": user.get("uid", ""),
                "groups": user.get("groups") or [],
                "extra": user.get("extra") or {},
                "nonResourceAttributes": {"path": path, "verb": verb},
            }
            access = await self._api.review("SubjectAccessReview", spec, REVIEW_TIMEOUT_SECONDS)
        except Exception as exc:  # whatever went wrong, the answer is "cannot tell", never "allowed"
            allowed, held = self._warnings.allow("review")
            if allowed:
                log.warning("auth_review_failed", error=" ".join(str(exc).split()) or repr(exc), suppressed=held)
            return Decision.UNAVAILABLE
        return Decision.ALLOWED if access.get("allowed") is True else Decision.FORBIDDEN


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(basic: BasicAuth | None, kubernetes: KubernetesAuth | None) -> Any:
    """Every route but OPEN_PATHS needs valid credentials of a scheme that is on."""
    challenges: list[tuple[str, str]] = []  # one header per scheme that is on
    if basic is not None:
        challenges.append(("WWW-Authenticate", 'Basic realm="khan"'))
    if kubernetes is not None:
        challenges.append(("WWW-Authenticate", 'Bearer realm="khan"'))

    def refuse(decision: Decision) -> web.Response:
        if decision is Decision.UNAUTHENTICATED:
            return web.Response(status=401, text="unauthorized\n", headers=challenges)
        if decision is Decision.FORBIDDEN:
            return web.Response(status=403, text="forbidden\n")
        if decision is Decision.BUSY:
            text = "too many credential checks at once\n"
            return web.Response(status=503, text=text, headers={"Retry-After": RETRY_AFTER_SECONDS})
        return web.Response(status=503, text="cannot check credentials now\n")

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        decision = Decision.UNAUTHENTICATED
        if scheme == "basic" and basic is not None:
            decision = await basic.check(credentials)
        elif scheme == "bearer" and kubernetes is not None and credentials:
            verb = VERBS.get(request.method, request.method.lower())
            decision = await kubernetes.check(credentials, verb, request.path)
        if decision is Decision.ALLOWED:
            return await handler(request)
        return refuse(decision)

    return authenticate
