"""--web-config-file and --tls-self-signed on the real agent: TLS from a test CA, client certificates required
and verified, basic auth against bcrypt hashes, a certificate rotated while the agent runs (as a Secret volume
swaps its files), and a bad configuration refused at start in one line. /healthz and /readyz stay open."""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml

from khan.demo.namespaces import private_prefix
from tests.support.auth_flood import flooding, scrape_and_probe
from tests.support.exposition import KHAN
from tests.support.protected_agent import EMPTY_INVENTORY, LabCa, private_netns, running_agent

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    with private_netns(private_prefix("khanprot") + "-ns") as name:
        yield name


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def web_config(directory: Path, config: dict[str, object]) -> list[str]:
    path = directory / "web.yml"
    path.write_text(yaml.safe_dump(config))
    return ["--web-config-file", str(path)]


def test_tls_with_required_client_certificates(netns: str, tmp_path: Path) -> None:
    ca = LabCa.create(tmp_path)
    ca.issue(tmp_path / "server.crt", tmp_path / "server.key", "node1")
    ca.issue(tmp_path / "client.crt", tmp_path / "client.key", "prometheus", server=False)
    tls = {"cert_file": "server.crt", "key_file": "server.key", "client_ca_file": ca.path.name}  # relative paths
    tls["client_auth_type"] = "RequireAndVerifyClientCert"
    with running_agent(netns, tmp_path, web_config(tmp_path, {"tls_server_config": tls})) as agent:
        with_cert = ca.client_context(tmp_path / "client.crt", tmp_path / "client.key")
        agent.wait_ready(context=with_cert)
        status, _, body = agent.request("/metrics", context=with_cert)  # the server is verified against the CA too
        assert status == 200
        assert b"khan_polls_total" in body
        without_cert = ca.client_context()
        for path in ("/metrics", "/healthz"):  # refused in the handshake, before any route
            with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
                agent.request(path, context=without_cert)
        other_ca = LabCa.create(tmp_path, "another CA")
        other_ca.issue(tmp_path / "stranger.crt", tmp_path / "stranger.key", "stranger", server=False)
        stranger = ca.client_context(tmp_path / "stranger.crt", tmp_path / "stranger.key")
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            agent.request("/metrics", context=stranger)
        assert agent.process.poll() is None


def test_basic_auth_over_tls(netns: str, tmp_path: Path) -> None:
    ca = LabCa.create(tmp_path)
    ca.issue(tmp_path / "server.crt", tmp_path / "server.key", "node1")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    config = {
        "tls_server_config": {"cert_file": str(tmp_path / "server.crt"), "key_file": str(tmp_path / "server.key")},
        "basic_auth_users": {"prometheus": hashed},
    }
    with running_agent(netns, tmp_path, web_config(tmp_path, config)) as agent:
        context = ca.client_context()
        agent.wait_ready(context=context)  # open without credentials
        assert agent.request("/healthz", context=context)[::2] == (200, b"ok\n")
        for path in ("/metrics", "/", "/transactions", "/flows", "/nowhere"):
            status, headers, _ = agent.request(path, context=context)
            assert status == 401, path
            assert headers["www-authenticate"] == ['Basic realm="khan"']
        started = time.monotonic()
        assert agent.status("/metrics", headers=basic("prometheus", PASSWORD), context=context) == 200
        first = time.monotonic() - started
        started = time.monotonic()
        assert agent.status("/flows", headers=basic("prometheus", PASSWORD), context=context) == 200
        cached = time.monotonic() - started
        assert agent.status("/metrics", headers=basic("prometheus", "wrong"), context=context) == 401
        assert agent.status("/metrics", headers=basic("nobody", PASSWORD), context=context) == 401
        assert agent.status("/metrics", headers={"Authorization": "Basic !!!"}, context=context) == 401
        assert agent.status("/metrics", headers={"Authorization": "Bearer x"}, context=context) == 401
        print(f"basic auth: first check {first * 1000:.0f} ms (bcrypt, cost 10), cached {cached * 1000:.0f} ms")


def test_a_flood_of_wrong_passwords_does_not_starve_a_known_scraper(netns: str, tmp_path: Path) -> None:
    """60 clients, each guessing a new password on every request: bcrypt runs 2 at a time and the rest are
    refused at once (503, Retry-After), outside the cap on scrapes in flight; the scraper whose password is cached
    gets every scrape, and the probes stay fast. (Before: 10 of 10 scrapes got 503.)"""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    config = web_config(tmp_path, {"basic_auth_users": {"prometheus": hashed}})  # plain HTTP: less client CPU
    with running_agent(netns, tmp_path, config, scheme="http") as agent:
        agent.wait_ready()
        good = basic("prometheus", PASSWORD)
        assert agent.status("/metrics", headers=good) == 200  # now cached
        with flooding(agent, lambda client, sent: basic("prometheus", f"guess {client} {sent}")) as flood:
            scrapes = scrape_and_probe(agent, good)
        answers = dict(flood.answers)
        print(
            f"wrong-password flood: {answers}; scraper {scrapes.statuses.count(200)}/{len(scrapes.statuses)} "
            f"got 200 (slowest {scrapes.slowest_scrape:.3f} s), slowest /healthz {scrapes.slowest_probe:.3f} s"
        )
        assert scrapes.statuses == [200] * len(scrapes.statuses)
        assert scrapes.slowest_probe < 1.0
        assert answers.get(401, 0) > 0
        assert answers.get(503, 0) > 0  # refused without queueing
        assert flood.busy_headers["retry-after"] == ["1"]
        assert set(answers) <= {401, 503}
        assert agent.process.poll() is None


def test_a_rotated_certificate_is_served_within_seconds(netns: str, tmp_path: Path) -> None:
    """As the kubelet updates a Secret volume: the files are links through `..data`, which is swapped at once."""
    ca = LabCa.create(tmp_path)
    volume = tmp_path / "volume"
    volume.mkdir()
    first_dir = volume / "..2024_01_01"
    first_dir.mkdir()
    first = ca.issue(first_dir / "tls.crt", first_dir / "tls.key", "node1")
    (volume / "..data").symlink_to(first_dir.name)
    for name in ("tls.crt", "tls.key"):
        (volume / name).symlink_to(f"..data/{name}")
    config = {"tls_server_config": {"cert_file": str(volume / "tls.crt"), "key_file": str(volume / "tls.key")}}
    with running_agent(netns, tmp_path, web_config(tmp_path, config)) as agent:
        agent.wait_ready(context=ca.client_context())
        assert agent.peer_serial() == first
        second_dir = volume / "..2024_02_01"
        second_dir.mkdir()
        second = ca.issue(second_dir / "tls.crt", second_dir / "tls.key", "node1")
        (volume / "..data_tmp").symlink_to(second_dir.name)
        os.replace(volume / "..data_tmp", volume / "..data")  # the atomic swap
        swapped = time.monotonic()
        while agent.peer_serial() != second:
            assert time.monotonic() - swapped < 5, "the new certificate was not served within 5 s"
            time.sleep(0.1)
        print(f"rotated certificate served after {time.monotonic() - swapped:.2f} s")
        # Written in place, key before certificate: the mismatched moment keeps the previous certificate.
        third = ca.issue(second_dir / "next.crt", second_dir / "tls.key", "node1")
        time.sleep(1.5)
        assert agent.peer_serial() == second
        os.replace(second_dir / "next.crt", second_dir / "tls.crt")
        deadline = time.monotonic() + 5
        while agent.peer_serial() != third:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert agent.status("/metrics", context=ca.client_context()) == 200
        events = [line["event"] for line in agent.log()]
        assert events.count("tls_reloaded") == 2
        assert events.count("tls_reload_failed") == 1  # once per broken state of the files, not every second


def test_self_signed_tls_needs_no_files(netns: str, tmp_path: Path) -> None:
    with running_agent(netns, tmp_path, ["--tls-self-signed"]) as agent:
        agent.wait_ready()
        assert agent.status("/metrics") == 200  # no auth asked for
        (made,) = [line for line in agent.log() if line["event"] == "tls_self_signed"]
        assert made["subject"] == "node1"
        assert int(str(made["serial"]), 16) == agent.peer_serial()


def test_a_client_without_nagle_gets_its_first_request_answered(netns: str, tmp_path: Path) -> None:
    """Go's clients (Prometheus, the kubelet's probes) disable Nagle's algorithm, so the request often arrives in
    the same read as the handshake's last message, before the handler is in place: it must be answered, not
    dropped until the header deadline."""
    with running_agent(netns, tmp_path, ["--tls-self-signed"]) as agent:
        agent.wait_ready()
        for _ in range(30):
            assert agent.status("/healthz", nodelay=True, timeout=2) == 200
        # Deterministically: the handshake's end and the request in one segment are answered at once ...
        for _ in range(5):
            assert agent.coalesced_request("/healthz", timeout=2).startswith(b"HTTP/1.1 200 OK")
        # ... and with the client's TLS close in the same segment too, no answer can reach it: the connection is
        # dropped without an error in the log, and the agent goes on serving.
        for _ in range(5):
            assert agent.coalesced_request("/healthz", close=True, timeout=2) == b""
        assert agent.status("/healthz") == 200
        time.sleep(1.5)  # a handler's task failing on a dead transport is reported when it is collected
        complaints = [line for line in agent.log() if line["level"] == "error" or line.get("logger") == "asyncio"]
        assert complaints == []


BAD_CONFIGS = {
    "unknown top key": ({"http_server_config": {"http2": False}}, "unknown or unsupported key http_server_config"),
    "unknown tls key": (
        {"tls_server_config": {"cert_file": "a", "key_file": "b", "cipher_suites": ["x"]}},
        "unknown or unsupported key tls_server_config.cipher_suites",
    ),
    "unverified client certs": (
        {"tls_server_config": {"cert_file": "a", "key_file": "b", "client_auth_type": "RequireAnyClientCert"}},
        "client_auth_type RequireAnyClientCert",
    ),
    "missing files": ({"tls_server_config": {"cert_file": "a.crt", "key_file": "b.key"}}, "cannot load the TLS"),
    "not a bcrypt hash": ({"basic_auth_users": {"prometheus": "secret"}}, "basic_auth_users.prometheus must be"),
    "not yaml": ("tls_server_config: [", "not valid YAML"),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_a_bad_web_config_is_one_line_at_start(tmp_path: Path, case: str) -> None:
    config, expected = BAD_CONFIGS[case]
    path = tmp_path / "web.yml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(EMPTY_INVENTORY)
    argv = [*KHAN, "agent", "--inventory", str(inventory), "--web-config-file", str(path), "--log-format", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"khan: --web-config-file {path}: ") or lines[0].startswith("khan: cannot load")
    assert expected in lines[0]
