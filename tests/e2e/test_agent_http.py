"""The real `khan agent` process: readiness, its four endpoints, read-only HTTP, SIGTERM, and the errors that
must end it with one clear line."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from khan.demo.lab import Lab
from tests.support.exposition import KHAN, connections, khan, lab_with_traffic, value
from tests.support.netns import run_in


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_ready(base: str, proc: subprocess.Popen[str], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if get(base + "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("agent not ready in time")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    with lab_with_traffic("khanagent", tmp_path_factory.mktemp("agent")) as built:
        yield built


@pytest.fixture
def agent(lab: tuple[Lab, Path]) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    the_lab, inventory = lab
    port = free_port()
    args = ["agent", "--inventory", str(inventory), "--node-name", "node1", "--netns", the_lab.netns("node1")]
    args += ["--listen", f"127.0.0.1:{port}", "--interval", "0.5", "--log-format", "json"]
    proc = subprocess.Popen([*KHAN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_serves_attributed_series_once_ready(agent: tuple[str, subprocess.Popen[str]]) -> None:
    base, proc = agent
    wait_ready(base, proc)
    status, text = get(base + "/metrics")
    assert status == 200
    found = connections(text, "node1")
    pod_a = ("pod", "10.244.1.10", "shop", "web", "pod-a")
    service = ("service", "10.96.0.10", "shop", "web-svc", "web-svc")
    assert found[(*pod_a, *service, "80", "tcp", "ESTABLISHED")] == 1
    assert value(text, "khan_polls_total") >= 1
    assert value(text, "khan_poll_errors_total") == 0
    assert value(text, "khan_last_successful_poll_timestamp_seconds") > time.time() - 60
    assert "process_resident_memory_bytes" in text


def test_landing_health_and_unknown_paths(agent: tuple[str, subprocess.Popen[str]]) -> None:
    base, proc = agent
    wait_ready(base, proc)
    status, page = get(base + "/")
    assert status == 200
    assert 'href="metrics"' in page
    assert get(base + "/healthz") == (200, "ok\n")
    assert get(base + "/readyz") == (200, "ready\n")
    assert get(base + "/nope")[0] == 404


def test_nothing_served_accepts_a_change(agent: tuple[str, subprocess.Popen[str]]) -> None:
    base, proc = agent
    wait_ready(base, proc)
    for path in ("/", "/metrics", "/healthz", "/readyz", "/transactions", "/flows"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert get(base + path, method)[0] == 405, (method, path)


def test_polls_keep_going_and_never_overlap(agent: tuple[str, subprocess.Popen[str]]) -> None:
    base, proc = agent
    wait_ready(base, proc)
    first = value(get(base + "/metrics")[1], "khan_polls_total")
    time.sleep(1.6)
    second = value(get(base + "/metrics")[1], "khan_polls_total")
    assert 2 <= second - first <= 4  # every 0.5 s


def test_sigterm_stops_cleanly_within_5_seconds(agent: tuple[str, subprocess.Popen[str]]) -> None:
    base, proc = agent
    wait_ready(base, proc)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 5
    _, stderr = proc.communicate()
    assert '"event": "agent_stopped"' in stderr


def test_port_in_use_is_one_clear_line(lab: tuple[Lab, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = khan(["agent", "--inventory", str(lab[1]), "--listen", f"127.0.0.1:{port}", "--log-level", "error"])
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"khan: cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_unreadable_inventory_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    done = khan(["snapshot", "--inventory", str(missing), "--log-level", "error"])
    assert done.returncode == 1
    assert done.stderr.strip() == f"khan: inventory file {missing}: cannot read it: No such file or directory"


def test_missing_namespace_is_one_clear_line() -> None:
    done = khan(["snapshot", "--netns", "khan-no-such-namespace", "--log-level", "error"])
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "khan: cannot enter network namespace 'khan-no-such-namespace': No such file or directory"
    )


@pytest.mark.parametrize("command", [["snapshot"], ["agent"]])  # the agent listens inside node1
def test_no_netlink_permission_is_one_clear_line(lab: tuple[Lab, Path], command: list[str]) -> None:
    # An unprivileged user in node1's namespace: the kernel refuses the dump with EPERM.
    done = run_in(
        lab[0],
        "node1",
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *KHAN, *command, "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "khan: no permission to read the conntrack table over netlink (run as root or grant CAP_NET_ADMIN)"
    )
