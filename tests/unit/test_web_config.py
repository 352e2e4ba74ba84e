"""The web configuration file read as exporter-toolkit reads it (paths relative to the file, a client CA alone
meaning RequireAndVerifyClientCert, TLS 1.2 at least), and KubernetesAuth's short memory of answers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from khan.web.auth import REVIEWS_AT_ONCE, Decision, KubernetesAuth
from khan.web.web_config import WebConfigError, load_web_config, parse_web_config

HASH = "$2b$10$" + "a" * 53


def test_an_empty_file_is_plain_http_without_auth(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("")
    config = load_web_config(str(path))
    assert config.tls is None
    assert dict(config.basic_auth_users) == {}


def test_paths_are_relative_to_the_file_and_defaults_follow_the_toolkit(tmp_path: Path) -> None:
    config = parse_web_config(
        {"tls_server_config": {"cert_file": "tls.crt", "key_file": "/abs/tls.key", "client_ca_file": "ca.crt"}},
        str(tmp_path),
    )
    assert config.tls is not None
    assert config.tls.cert_file == str(tmp_path / "tls.crt")
    assert config.tls.key_file == "/abs/tls.key"
    assert config.tls.client_ca_file == str(tmp_path / "ca.crt")
    assert config.tls.client_auth == ssl.CERT_REQUIRED  # a CA alone means RequireAndVerifyClientCert
    assert config.tls.min_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"cert_file": "a"}, "needs both cert_file and key_file"),
        ({"cert_file": "a", "key_file": "b", "client_auth_type": "VerifyClientCertIfGiven"}, "needs client_ca_file"),
        ({"cert_file": "a", "key_file": "b", "min_version": "TLS10"}, "TLS12 is the oldest"),
        ({"cert_file": "a", "key_file": "b", "min_version": "TLS13", "max_version": "TLS12"}, "below min_version"),
        ({"cert_file": "a", "key_file": "b", "client_auth_type": "Sometimes"}, "must be one of"),
    ],
)
def test_tls_mistakes_are_named(tls: dict[str, str], message: str) -> None:
    with pytest.raises(WebConfigError, match=message):
        parse_web_config({"tls_server_config": tls}, "/")


def test_basic_auth_users_need_bcrypt_hashes() -> None:
    assert parse_web_config({"basic_auth_users": {"alice": HASH}}, "/").basic_auth_users == {"alice": HASH.encode()}
    with pytest.raises(WebConfigError, match="alice must be a bcrypt hash"):
        parse_web_config({"basic_auth_users": {"alice": "$1$md5"}}, "/")
    with pytest.raises(WebConfigError, match="not a user name"):
        parse_web_config({"basic_auth_users": {"a:b": HASH}}, "/")


class CountingApi:
    """Answers like an API server that knows one token, bound to read /metrics; counts the reviews."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False

    async def review(self, kind: str, spec: Mapping[str, Any], timeout: float) -> Mapping[str, Any]:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("down")
        if kind == "TokenReview":
            return {"authenticated": spec["token"] == "good", "user": {"username": "prom", "groups": []}}
        return {"allowed": spec["nonResourceAttributes"]["path"] == "/metrics"}


def test_answers_are_remembered_but_an_outage_is_not() -> None:
    async def scenario() -> None:
        api = CountingApi()
        auth = KubernetesAuth(api)
        assert await auth.check("good", "get", "/metrics") is Decision.ALLOWED
        assert await auth.check("good", "get", "/metrics") is Decision.ALLOWED
        assert api.calls == 2  # one TokenReview and one SubjectAccessReview, then the cache
        assert await auth.check("good", "get", "/flows") is Decision.FORBIDDEN
        assert await auth.check("bad", "get", "/metrics") is Decision.UNAUTHENTICATED
        calls = api.calls
        assert await auth.check("bad", "get", "/metrics") is Decision.UNAUTHENTICATED
        assert api.calls == calls
        api.down = True
        assert await auth.check("other", "get", "/metrics") is Decision.UNAVAILABLE
        api.down = False
        assert await auth.check("other", "get", "/metrics") is Decision.UNAUTHENTICATED

    asyncio.run(scenario())


class HungApi(CountingApi):
    """Answers only when `answer` is set: a hung API server."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()

    async def review(self, kind: str, spec: Mapping[str, Any], timeout: float) -> Mapping[str, Any]:
        await self.answer.wait()
        return await super().review(kind, spec, timeout)


def test_unknown_tokens_never_queue_and_cannot_lock_out_a_known_one() -> None:
    async def scenario() -> None:
        api = HungApi()
        auth = KubernetesAuth(api)
        api.answer.set()
        assert await auth.check("good", "get", "/metrics") is Decision.ALLOWED
        api.answer.clear()
        waiting = [asyncio.create_task(auth.check(f"junk {n}", "get", "/metrics")) for n in range(REVIEWS_AT_ONCE)]
        await asyncio.sleep(0.01)
        assert await auth.check("junk more", "get", "/metrics") is Decision.BUSY  # at once, not queued
        assert await auth.check("good", "get", "/metrics") is Decision.ALLOWED  # cached
        auth._allowed.clear()  # as 60 s later: "good" is reviewed again, in a slot no junk token can take
        renewal = asyncio.create_task(auth.check("good", "get", "/metrics"))
        await asyncio.sleep(0.01)
        assert not renewal.done()
        api.answer.set()
        assert await renewal is Decision.ALLOWED
        assert [await task for task in waiting] == [Decision.UNAUTHENTICATED] * REVIEWS_AT_ONCE

    asyncio.run(scenario())
