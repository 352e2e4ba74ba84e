"""The real `khan agent` against the real API server, both inside the lab's node1 namespace, and the lab's
objects created through the API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from khan.conntrack.namespace import entered
from khan.demo.inventory import inventory_objects
from khan.demo.lab import Lab
from tests.support.exposition import KHAN, Series, connections, samples
from tests.support.kube_cluster import API_PORT, DEPLOY, Cluster, stop_process
from tests.support.lab_series import NODE1_SERIES

# deploy/'s RBAC objects, created as `kubectl apply -k deploy/` would.
RBAC_FILES = [DEPLOY / f"{name}.yaml" for name in ("namespace", "serviceaccount", "clusterrole", "clusterrolebinding")]
# The lab's TCP series on node1 (its UDP entry expires 30 s after its one reply; these tests run longer).
LAB_TCP = {labels for labels in NODE1_SERIES if labels[-2] == "tcp"}
AGENT_PORT = 9986
INTERVAL = 1.0  # seconds between polls: changes must show within about one of them


@dataclass
class RunningAgent:
    process: subprocess.Popen[bytes]
    netns: str
    log_path: Path

    def get(self, path: str) -> tuple[int, str]:
        with entered(self.netns):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{AGENT_PORT}{path}", timeout=5) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

    def metrics(self) -> str:
        status, text = self.get("/metrics")
        assert status == 200, text
        return text

    def series(self) -> dict[Series, int]:
        """The lab's TCP series: the API server's own loopback connections are left out, and so is the lab's UDP
        exchange, whose entry expires 30 s after its one reply (these tests run longer)."""
        found = connections(self.metrics(), "node1")
        return {labels: count for labels, count in found.items() if labels[-2] == "tcp" and labels[1] != "127.0.0.1"}

    def log(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, check: Callable[[], bool], seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.alive(), f"agent exited: {self.log_path.read_text()[-3000:]}"
            with contextlib.suppress(OSError):
                if check():
                    return
            time.sleep(0.1)
        raise AssertionError(f"not within {seconds} s: {what}\n{self.log_path.read_text()[-3000:]}")

    def wait_ready(self, seconds: float = 30) -> None:
        self.wait_until(lambda: self.get("/readyz")[0] == 200, seconds, "agent ready")

    def wait_series(
        self, check: Callable[[dict[Series, int]], bool], what: str, seconds: float = 3 * INTERVAL + 2
    ) -> None:
        """The default allows for the poll under way, the next one, and a slow machine."""
        last: list[dict[Series, int]] = [{}]

        def holds() -> bool:
            last[0] = self.series()
            return check(last[0])

        try:
            self.wait_until(holds, seconds, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast series:\n" + "\n".join(map(str, sorted(last[0])))) from None

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)


# As a pod sees its service account: a private mount namespace with a tmpfs over /run (which /var/run links
# to), holding the token and the CA where the in-cluster loader reads them. Nothing reaches the host's /run.
IN_CLUSTER_SHIM = (
    "set -e; mount -t tmpfs khan-secrets /run; d=/run/secrets/kubernetes.io/serviceaccount; mkdir -p $d;"
    ' cp "$1" $d/token; cp "$2" $d/ca.crt; shift 2; exec "$@"'
)


@contextlib.contextmanager
def agent_in(
    lab: Lab, cluster: Cluster, user: str, workdir: Path, extra: Sequence[str] = (), in_cluster: bool = False
) -> Iterator[RunningAgent]:
    """`khan agent` as `user` in node1's namespace, with --kubeconfig, or in_cluster: with no flag and a service
    account token mounted as in a pod. Stopped (SIGTERM, then SIGKILL) at the end."""
    log_path = workdir / f"agent-{time.monotonic_ns()}.log"
    argv = [*KHAN, "agent", "--node-name", "node1", "--listen", f"127.0.0.1:{AGENT_PORT}"]
    argv += ["--interval", str(INTERVAL), "--log-format", "json", *extra]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KUBE", "KHAN_"))}
    if in_cluster:
        token = workdir / f"token-{time.monotonic_ns()}"
        token.write_text(cluster.tokens[user])
        shim = ["unshare", "--mount", "--propagation", "private", "sh", "-c", IN_CLUSTER_SHIM, "sh"]
        argv = [*shim, str(token), str(cluster.ca), *argv]
        env |= {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(API_PORT)}
    else:
        kubeconfig = cluster.kubeconfig(user, workdir / f"kubeconfig-{user.replace(':', '-')}")
        argv += ["--kubeconfig", str(kubeconfig)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(["ip", "netns", "exec", lab.netns("node1"), *argv], stdout=log, stderr=log, env=env)
    agent = RunningAgent(process, lab.netns("node1"), log_path)
    try:
        yield agent
    finally:
        with contextlib.suppress(OSError):
            process.send_signal(signal.SIGCONT)  # a paused agent must be able to act on SIGTERM
        stop_process(process)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample whose labels include `labels`; None if there is none."""
    for found_labels, value in samples(text, name).items():
        if set(labels.items()) <= set(found_labels):
            return value
    return None


def create_lab_objects(cluster: Cluster, objects: Sequence[dict[str, Any]]) -> None:
    for namespace in sorted({obj["metadata"]["namespace"] for obj in objects if "namespace" in obj["metadata"]}):
        cluster.ensure_namespace(namespace)
    for obj in objects:
        cluster.create(obj)


def lab_object(kind: str, name: str) -> dict[str, Any]:
    (found,) = [obj for obj in inventory_objects() if obj["kind"] == kind and obj["metadata"]["name"] == name]
    return found
