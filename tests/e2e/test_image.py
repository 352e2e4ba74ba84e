"""The agent image, built here offline (deploy/image/build.sh, cached by its inputs), run the way the DaemonSet
runs it: root with every capability dropped but NET_ADMIN, a read-only root filesystem with no tmpfs either, no
new privileges, in a node's network namespace (the lab's node1 stands in for hostNetwork), `--tls-self-signed`,
NODE_NAME and KHAN_LOG_FORMAT from the environment. The inventory file, mounted read-only, stands in for the API
(`--auth kubernetes` needs one, so the endpoints are open here)."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from khan import __version__
from khan.demo.lab import Lab
from khan.demo.topology import PODS
from tests.support.container_image import (
    build_image,
    dockerfile_config,
    inspect_image,
    inspected_config,
    podman,
    podman_env,
    require_image_tools,
)
from tests.support.exposition import connections, lab_with_traffic, samples
from tests.support.lab_agent import total
from tests.support.lab_series import NODE1_SERIES
from tests.support.netns import run_in
from tests.support.protected_agent import PORT, Agent  # PORT: the image's EXPOSE, the agent's default

INVENTORY = "/etc/khan/inventory.yaml"
INTERVAL = "0.5"
NETLINK_DENIED = "khan: no permission to read the conntrack table over netlink (run as root or grant CAP_NET_ADMIN)"
NODE1_TCP = {labels for labels in NODE1_SERIES if labels[-2] == "tcp"}  # the lab's UDP entry may expire first


@pytest.fixture(scope="module")
def image() -> str:
    require_image_tools()
    started = time.monotonic()
    reference = build_image()
    print(f"image {reference} ready in {time.monotonic() - started:.1f} s")  # cold ~1.5 min, cached ~1 s
    return reference


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path]]:
    with lab_with_traffic("khanimage", tmp_path_factory.mktemp("image")) as built:
        yield built


def run_flags(lab: Lab, inventory: Path, capabilities: Sequence[str]) -> list[str]:
    """`podman run`'s flags for the agent as the DaemonSet's securityContext has it, in node1's namespace."""
    hard_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    flags = ["--runtime", "runc", "--rm", "--network", f"ns:/run/netns/{lab.netns('node1')}"]
    # This VM refuses podman's default limits (above what root may set here): the machine's own hard limits.
    flags += ["--ulimit", f"nofile={hard_nofile}:{hard_nofile}", "--ulimit", "nproc=32768:32768"]
    flags += ["--read-only", "--read-only-tmpfs=false", "--security-opt", "no-new-privileges", "--cap-drop", "ALL"]
    flags += [f"--cap-add={capability}" for capability in capabilities]
    flags += ["--env", "NODE_NAME=node1", "--env", "KHAN_LOG_FORMAT=json"]
    return [*flags, "--volume", f"{inventory}:{INVENTORY}:ro"]


def agent_args() -> list[str]:
    return ["agent", "--inventory", INVENTORY, "--tls-self-signed", "--interval", INTERVAL]


def metrics(agent: Agent) -> str:
    status, _, body = agent.request("/metrics")
    assert status == 200, body
    return body.decode()


def wait_until(agent: Agent, check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert agent.process.poll() is None, f"the container exited: {agent.log_path.read_text()[-3000:]}"
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}\n{agent.log_path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def container(image: str, lab: tuple[Lab, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """The agent in the image, served over HTTPS with its in-memory certificate (the requests, as a scraper's
    with insecureSkipVerify, do not verify it)."""
    the_lab, inventory = lab
    name = f"khan-image-test-{os.getpid()}"
    log_path = tmp_path_factory.mktemp("container") / "agent.log"
    argv = ["podman", "run", "--name", name, *run_flags(the_lab, inventory, ["NET_ADMIN"]), image, *agent_args()]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log, env=podman_env())
    agent = Agent(process, the_lab.netns("node1"), log_path, "https")
    try:
        agent.wait_ready(seconds=60)
        yield agent
    finally:  # the container first: the lab's namespaces go when the lab fixture ends, after this
        podman("rm", "--force", "--time", "5", name, check=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_the_built_image_has_the_dockerfiles_configuration(image: str) -> None:
    assert inspected_config(inspect_image(image)) == dockerfile_config()


def test_the_agent_in_the_image_attributes_the_nodes_connections(container: Agent) -> None:
    last: list[dict[tuple[str, ...], int]] = [{}]

    def all_there() -> bool:
        last[0] = connections(metrics(container), "node1")
        return set(last[0]) >= NODE1_TCP

    wait_until(container, all_there, 10, f"the lab's TCP series on node1; last: {sorted(last[0])}")
    assert all(last[0][labels] == 1 for labels in NODE1_TCP)
    status, _, body = container.request("/healthz")
    assert (status, body) == (200, b"ok\n")
    text = metrics(container)
    ((build_labels, built),) = samples(text, "khan_build_info").items()
    assert built == 1
    assert dict(build_labels)["version"] == __version__
    assert dict(build_labels)["python_version"].startswith("3.11.")  # bookworm's python3, not the host's
    (errors,) = samples(text, "khan_poll_errors_total").values()
    assert errors == 0


def test_events_of_a_short_connection_reach_the_agent(container: Agent, lab: tuple[Lab, Path]) -> None:
    the_lab = lab[0]
    pod_a, pod_b = PODS[0], PODS[1]
    pair = {"src_name": "pod-a", "dst_name": "pod-b", "dst_port": "8080"}

    def counts() -> dict[str, float]:
        text = metrics(container)
        found = {kind: total(text, "khan_events_total", type=kind) for kind in ("new", "destroy")}
        return {**found, "opened": total(text, "khan_connections_opened_total", **pair)}

    before = counts()
    client = the_lab.connect_tcp("pod-a", pod_b.ipv4, 8080)
    client_port = client.getsockname()[1]
    client.close()
    # A closed connection's entry stays for minutes (TIME_WAIT): delete it, as its timeout would; only it, the
    # lab's own connection from pod-a to pod-b stays.
    entry = ["-p", "tcp", "-s", pod_a.ipv4, "--sport", str(client_port), "-d", pod_b.ipv4, "--dport", "8080"]
    deleted = run_in(the_lab, "node1", ["conntrack", "-D", *entry], capture_output=True, text=True, timeout=10)
    assert deleted.returncode == 0, deleted.stderr
    last = [before]

    def counted() -> bool:
        last[0] = counts()
        return last[0]["opened"] == before["opened"] + 1 and last[0]["destroy"] > before["destroy"]

    # The destroy event is the deleted entry's alone; with its baseline taken the agent hears no more NEW events, and
    # the DESTROY counted the connection.
    wait_until(container, counted, 10, f"the connection opened and its DESTROY counted, from {before}")
    assert last[0]["new"] == before["new"], (before, last[0])


def test_without_net_admin_the_agent_exits_with_one_line(image: str, lab: tuple[Lab, Path]) -> None:
    the_lab, inventory = lab
    # Another port: the module's container listens on the image's in the same namespace.
    name = f"khan-image-test-{os.getpid()}-no-net-admin"
    argv = ["run", "--name", name, *run_flags(the_lab, inventory, []), image, *agent_args()]
    argv += ["--listen", f"127.0.0.1:{PORT + 1}", "--log-level", "error"]
    try:
        done = podman(*argv, timeout=60, check=False)
    finally:  # --rm removes it when it exits; this, when it did not (a timeout)
        podman("rm", "--force", "--ignore", "--time", "0", name, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == NETLINK_DENIED
