"""khan.io/max-connections on a real kube-apiserver: annotating a Service or a Pod makes khan_connection_limit
appear in the agent's /metrics, named as khan_connection names the destination; an edit changes it, removing the
annotation removes the series, a bad value leaves the agent serving with a warning, and under --aggregate
workload a workload's limit is the sum of its live pods'."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from khan.demo.inventory import inventory_objects
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.traffic import start_demo_traffic
from khan.inventory.limits import ANNOTATION
from tests.support.exposition import KHAN, samples
from tests.support.kube_agent import RBAC_FILES, RunningAgent, agent_in, create_lab_objects, sample
from tests.support.kube_cluster import KHAN_USER, ApiError, Cluster, running_cluster
from tests.support.netns import run_in

LIMIT = "khan_connection_limit"
WAIT = 6.0  # seconds: the watch event, then a poll (every second here), then a rendering


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Cluster, Path]]:
    workdir = tmp_path_factory.mktemp("limits")
    with Lab.create(prefix=private_prefix("khanlimit")) as lab:
        start_demo_traffic(lab)
        with running_cluster(lab.netns("node1"), "10.250.0.1") as cluster:
            cluster.apply_files(RBAC_FILES)
            create_lab_objects(cluster, inventory_objects())
            yield lab, cluster, workdir


def annotate(cluster: Cluster, kind: str, name: str, value: str | None) -> None:
    """Set the annotation, or remove it (None: a merge patch's null)."""
    cluster.patch(kind, name, "shop", {"metadata": {"annotations": {ANNOTATION: value}}})


def limits(agent: RunningAgent) -> dict[tuple[str, str, str], float]:
    """khan_connection_limit's samples by (dst_type, dst_ns, dst_name)."""
    found = {}
    for labels, value in samples(agent.metrics(), LIMIT).items():
        named = dict(labels)
        found[named["dst_type"], named["dst_ns"], named["dst_name"]] = value
    return found


def wait_limits(agent: RunningAgent, expected: dict[tuple[str, str, str], float], what: str) -> None:
    agent.wait_until(lambda: limits(agent) == expected, WAIT, f"{what}: {expected}, last {limits(agent)}")


def destinations(agent: RunningAgent) -> set[tuple[str, str, str]]:
    """(dst_type, dst_ns, dst_name) of every khan_connection series."""
    found = set()
    for labels in samples(agent.metrics(), "khan_connection"):
        named = dict(labels)
        found.add((named["dst_type"], named["dst_ns"], named["dst_name"]))
    return found


def test_annotating_a_service_and_a_pod_serves_their_limits(world: tuple[Lab, Cluster, Path]) -> None:
    lab, cluster, workdir = world
    with agent_in(lab, cluster, KHAN_USER, workdir) as agent:
        agent.wait_ready()
        assert limits(agent) == {}
        try:
            annotate(cluster, "Service", "web-svc", "100")
            annotate(cluster, "Pod", "pod-c", "40")
            wait_limits(agent, {("service", "shop", "web-svc"): 100, ("pod", "shop", "pod-c"): 40}, "both declared")
            # Spelled as khan_connection spells the destination: pod-a's connections to the ClusterIP and pod-c.
            assert set(limits(agent)) <= destinations(agent)

            annotate(cluster, "Service", "web-svc", "250")
            wait_limits(agent, {("service", "shop", "web-svc"): 250, ("pod", "shop", "pod-c"): 40}, "service edited")

            annotate(cluster, "Service", "web-svc", None)
            wait_limits(agent, {("pod", "shop", "pod-c"): 40}, "service annotation removed")

            annotate(cluster, "Pod", "pod-c", "forty")
            wait_limits(agent, {}, "bad value ignored")
            text = agent.metrics()
            assert sample(text, "khan_connection_limits_ignored", reason="invalid") == 1
            assert agent.get("/readyz")[0] == 200
            warned = [line for line in agent.log() if line.get("event") == "connection_limit_invalid"]
            assert warned, agent.log_path.read_text()[-2000:]
            assert (warned[0]["kind"], warned[0]["namespace"], warned[0]["name"]) == ("Pod", "shop", "pod-c")
            assert warned[0]["value"] == "'forty'"
            assert warned[0]["level"] == "warning"

            annotate(cluster, "Pod", "pod-c", "75")  # fixed: served again, and no longer counted as invalid
            wait_limits(agent, {("pod", "shop", "pod-c"): 75}, "bad value fixed")
            assert sample(agent.metrics(), "khan_connection_limits_ignored", reason="invalid") == 0
            assert agent.alive()
        finally:
            annotate(cluster, "Service", "web-svc", None)
            annotate(cluster, "Pod", "pod-c", None)


def replica(name: str) -> dict[str, Any]:
    """A Deployment's pod, as its ReplicaSet makes it (no controller runs here: the pod stays Pending)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": {"app": "db", "pod-template-hash": "5f7c9d"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "db-5f7c9d", "uid": "u-db", "controller": True}
            ],
        },
        "spec": {"nodeName": "node2", "containers": [{"name": "db", "image": "registry.k8s.io/pause:3.9"}]},
    }


def test_under_workload_aggregation_a_workload_declares_the_sum_of_its_live_pods(
    world: tuple[Lab, Cluster, Path],
) -> None:
    lab, cluster, workdir = world
    pods = {"db-5f7c9d-aaaaa": "100", "db-5f7c9d-bbbbb": "100", "db-5f7c9d-ccccc": "50"}
    try:
        for name, limit in pods.items():
            cluster.create(replica(name))
            annotate(cluster, "Pod", name, limit)
        annotate(cluster, "Service", "web-svc", "500")
        with agent_in(lab, cluster, KHAN_USER, workdir, ["--aggregate", "workload"]) as agent:
            agent.wait_ready()
            wait_limits(agent, {("pod", "shop", "db"): 250, ("service", "shop", "web-svc"): 500}, "the sum")
            cluster.patch_status("Pod", "db-5f7c9d-ccccc", "shop", {"phase": "Failed"})  # finished: counts no more
            wait_limits(agent, {("pod", "shop", "db"): 200, ("service", "shop", "web-svc"): 500}, "one failed")
            cluster.delete("Pod", "db-5f7c9d-bbbbb", "shop")  # deleted: counts no more, at once
            wait_limits(agent, {("pod", "shop", "db"): 100, ("service", "shop", "web-svc"): 500}, "one deleted")
    finally:
        annotate(cluster, "Service", "web-svc", None)
        for name in pods:
            with contextlib.suppress(ApiError):  # already gone
                cluster.delete("Pod", name, "shop")


def snapshot(lab: Lab, *args: str) -> str:
    argv = [*KHAN, "snapshot", "--node-name", "node1", "--log-level", "error", *args]
    done = run_in(lab, "node1", argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_khan_snapshot_serves_the_limits_from_the_api_and_from_a_file(world: tuple[Lab, Cluster, Path]) -> None:
    lab, cluster, workdir = world
    annotate(cluster, "Service", "web-svc", "120")
    try:
        text = snapshot(lab, "--kubeconfig", str(cluster.kubeconfig(KHAN_USER, workdir / "snapshot-kubeconfig")))
        assert sample(text, LIMIT, dst_type="service", dst_ns="shop", dst_name="web-svc") == 120
    finally:
        annotate(cluster, "Service", "web-svc", None)
    objects = inventory_objects()
    for obj in objects:
        if obj["metadata"]["name"] in ("web-svc", "pod-c"):
            obj["metadata"]["annotations"] = {ANNOTATION: "33"}
    path = workdir / "inventory.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}))
    text = snapshot(lab, "--inventory", str(path))
    assert samples(text, LIMIT) == {
        (("dst_name", "pod-c"), ("dst_ns", "shop"), ("dst_type", "pod")): 33,
        (("dst_name", "web-svc"), ("dst_ns", "shop"), ("dst_type", "service")): 33,
    }
