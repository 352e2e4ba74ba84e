"""`khan agent --kubeconfig` against a real kube-apiserver and etcd, running as deploy/'s ServiceAccount with
RBAC on, attributing the lab's real connections: initial lists, changes as they happen, an API outage, a forced
410 Gone, and odd objects."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from khan.demo.inventory import inventory_objects
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.traffic import start_demo_traffic
from tests.support.exposition import KHAN, Series, connections, khan, samples
from tests.support.kube_agent import (
    INTERVAL,
    LAB_TCP,
    RBAC_FILES,
    RunningAgent,
    agent_in,
    create_lab_objects,
    lab_object,
    sample,
)
from tests.support.kube_cluster import KHAN_USER, Cluster, running_cluster
from tests.support.lab_series import (
    GATEWAY1,
    POD_A,
    POD_TO_CLUSTER_IP,
    POD_TO_POD_SAME_NODE,
    SERVICE,
    series,
)
from tests.support.netns import run_in


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Cluster, Path]]:
    """The lab with traffic; etcd and the API server on node1's loopback; deploy/'s RBAC and the lab's objects
    created through the API. Tests that change objects put them back."""
    workdir = tmp_path_factory.mktemp("kube")
    with Lab.create(prefix=private_prefix("khankube")) as lab:
        start_demo_traffic(lab)
        with running_cluster(lab.netns("node1"), "10.250.0.1") as cluster:
            cluster.apply_files(RBAC_FILES)
            create_lab_objects(cluster, inventory_objects())
            yield lab, cluster, workdir


@pytest.fixture
def agent(world: tuple[Lab, Cluster, Path]) -> Iterator[RunningAgent]:
    lab, cluster, workdir = world
    with agent_in(lab, cluster, KHAN_USER, workdir, ["--deleted-pod-grace", "4", "--watch-timeout", "3"]) as running:
        running.wait_ready()
        yield running


def with_end(expected: set[Series], old: tuple[str, ...], new: tuple[str, ...]) -> set[Series]:
    """The expected series with every occurrence of one end (type, ip, ns, app, name) replaced."""
    out = set()
    for labels in expected:
        if labels[0:5] == old:
            labels = new + labels[5:]
        if labels[5:10] == old:
            labels = labels[:5] + new + labels[10:]
        out.add(labels)
    return out


def with_app(expected: set[Series], pod: str, app: str) -> set[Series]:
    """The expected series with the `app` of every end that names this pod (both of its IPs) changed."""
    out = set()
    for labels in expected:
        ends = [list(labels[0:5]), list(labels[5:10])]
        for end in ends:
            if end[0] == "pod" and end[4] == pod:
                end[3] = app
        out.add((*ends[0], *ends[1], *labels[10:]))
    return out


def test_initial_lists_attribute_every_lab_connection(agent: RunningAgent) -> None:
    assert set(agent.series()) == LAB_TCP  # includes pod-a over the finished old-job on 10.244.1.10
    text = agent.metrics()
    for resource in ("pods", "services", "nodes"):
        assert sample(text, "khan_inventory_synced", resource=resource) == 1
        assert sample(text, "khan_inventory_watch_starts_total", resource=resource, reason="initial") == 1
        assert sample(text, "khan_inventory_last_event_age_seconds", resource=resource) is not None
    # 5 lab pods (the hostNetwork and the finished one included); web-svc and the API server's own `kubernetes`.
    assert sample(text, "khan_inventory_objects", kind="Pod") == 5
    assert sample(text, "khan_inventory_objects", kind="Service") == 2
    assert sample(text, "khan_inventory_objects", kind="Node") == 2
    assert not samples(text, "khan_kube_api_errors_total")


def test_a_label_change_follows_within_a_poll(world: tuple[Lab, Cluster, Path], agent: RunningAgent) -> None:
    _, cluster, _ = world
    cluster.patch("Pod", "pod-a", "shop", {"metadata": {"labels": {"app": "storefront"}}})
    try:
        agent.wait_series(lambda found: set(found) == with_app(LAB_TCP, "pod-a", "storefront"), "app=storefront")
    finally:
        cluster.patch("Pod", "pod-a", "shop", {"metadata": {"labels": {"app": "web"}}})
    agent.wait_series(lambda found: set(found) == LAB_TCP, "app=web again")


def test_deleted_pod_lingers_then_its_ip_goes_to_the_new_pod(
    world: tuple[Lab, Cluster, Path], agent: RunningAgent
) -> None:
    _, cluster, _ = world
    pod_b = lab_object("Pod", "pod-b")
    cluster.delete("Pod", "pod-b", "shop")
    try:
        # Within the grace period (4 s) the connections to 10.244.1.11 still name pod-b.
        agent.wait_until(lambda: sample(agent.metrics(), "khan_inventory_deleted_pods") == 1, 3, "pod-b lingering")
        assert POD_TO_POD_SAME_NODE in agent.series()
        # A new pod given the same IP takes it over at once.
        reborn = copy.deepcopy(pod_b)
        reborn["metadata"]["name"] = "pod-b-reborn"
        cluster.create(reborn)
        agent.wait_series(
            lambda found: (
                series(POD_A, ("pod", "10.244.1.11", "shop", "api", "pod-b-reborn"), "8080", "tcp", "ESTABLISHED")
                in found
            ),
            "the IP named after the new pod",
        )
        cluster.delete("Pod", "pod-b-reborn", "shop")
        # Once both graces are over, nothing claims 10.244.1.11 any more.
        agent.wait_series(
            lambda found: series(POD_A, ("external", "10.244.1.11", "", "", ""), "8080", "tcp", "ESTABLISHED") in found,
            "the IP external after the grace period",
            seconds=4 + 3 * INTERVAL + 2,
        )
        assert sample(agent.metrics(), "khan_inventory_deleted_pods") == 0
    finally:
        cluster.create(pod_b)
    agent.wait_series(lambda found: set(found) == LAB_TCP, "pod-b back")


def test_a_finished_pod_never_takes_a_running_pods_ip(world: tuple[Lab, Cluster, Path], agent: RunningAgent) -> None:
    # A Job's pod that finished on 10.244.1.11 and is newer than pod-b: its status still lists the IP.
    _, cluster, _ = world
    finished = copy.deepcopy(lab_object("Pod", "pod-b"))
    finished["metadata"].update(name="report-28800000-x2x9z", labels={"app": "report"})
    finished["status"]["phase"] = "Succeeded"
    cluster.create(finished)
    try:
        agent.wait_until(lambda: sample(agent.metrics(), "khan_inventory_objects", kind="Pod") == 6, 5, "6 pods")
        agent.wait_series(lambda found: set(found) == LAB_TCP, "pod-b still named")  # a full poll after the event
    finally:
        cluster.delete("Pod", "report-28800000-x2x9z", "shop")


def test_service_deleted_and_created(world: tuple[Lab, Cluster, Path], agent: RunningAgent) -> None:
    _, cluster, _ = world
    cluster.delete("Service", "web-svc", "shop")
    external = ("external", "10.96.0.10", "", "", "")
    try:
        agent.wait_series(lambda found: set(found) == with_end(LAB_TCP, SERVICE, external), "service gone")
        assert sample(agent.metrics(), "khan_inventory_objects", kind="Service") == 1
    finally:
        cluster.create(lab_object("Service", "web-svc"))
    agent.wait_series(lambda found: POD_TO_CLUSTER_IP in found, "service back")
    assert set(agent.series()) == LAB_TCP


def test_a_node_without_pod_cidr_then_given_one(world: tuple[Lab, Cluster, Path], agent: RunningAgent) -> None:
    _, cluster, _ = world
    node1 = lab_object("Node", "node1")
    without_cidr = copy.deepcopy(node1)
    del without_cidr["spec"]
    cluster.delete("Node", "node1")
    cluster.create(without_cidr)
    external_gateway = ("external", "10.244.1.1", "", "", "")
    agent.wait_series(lambda found: set(found) == with_end(LAB_TCP, GATEWAY1, external_gateway), "no podCIDR")
    # A pod CIDR may be set once on a node that has none, as the node IPAM controller does.
    cluster.patch("Node", "node1", None, {"spec": node1["spec"]})
    agent.wait_series(lambda found: set(found) == LAB_TCP, "the gateway named after node1's podCIDR")


def test_api_outage_keeps_last_names_and_recovers(world: tuple[Lab, Cluster, Path], agent: RunningAgent) -> None:
    _, cluster, _ = world
    polls_before = sample(agent.metrics(), "khan_polls_total") or 0

    # A hung API server: streams stay open and go silent; after 2 x --watch-timeout they are presumed dead.
    cluster.pause_apiserver()
    try:
        agent.wait_until(
            lambda: (sample(agent.metrics(), "khan_inventory_watch_starts_total", reason="inactive") or 0) >= 1,
            15,
            "a silent watch noticed",
        )
        assert set(agent.series()) == LAB_TCP
    finally:
        cluster.resume_apiserver()

    # A stopped API server: connections refused. Polls go on with the last known names.
    cluster.stop_apiserver()
    try:
        agent.wait_until(
            lambda: (sample(agent.metrics(), "khan_kube_api_errors_total", code="connection") or 0) >= 3,
            20,
            "failed requests counted",
        )
        assert set(agent.series()) == LAB_TCP
        assert agent.get("/readyz")[0] == 200  # synced once: the last known state is still served
    finally:
        cluster.start_apiserver()
    text = agent.metrics()
    assert (sample(text, "khan_polls_total") or 0) > polls_before + 5
    assert sample(text, "khan_poll_errors_total") == 0

    # Back: changes flow again, without restarting the agent.
    cluster.patch("Pod", "pod-a", "shop", {"metadata": {"labels": {"app": "storefront"}}})
    try:
        agent.wait_series(
            lambda found: set(found) == with_app(LAB_TCP, "pod-a", "storefront"), "a change after the outage", 40
        )
    finally:
        cluster.patch("Pod", "pod-a", "shop", {"metadata": {"labels": {"app": "web"}}})
    agent.wait_series(lambda found: set(found) == LAB_TCP, "app=web again")
    restarts = [line for line in agent.log() if line.get("event") == "watch_restart" and line["reason"] != "closed"]
    assert {line["reason"] for line in restarts} >= {"inactive", "error"}
    assert all(line["level"] == "warning" and line["resource"] in ("pods", "services", "nodes") for line in restarts)


def test_forced_410_relists_and_stays_correct(world: tuple[Lab, Cluster, Path], agent: RunningAgent) -> None:
    _, cluster, _ = world
    expired_before = sample(agent.metrics(), "khan_inventory_watch_starts_total", resource="pods", reason="expired")
    # While the agent is frozen: a pod changes and another disappears; etcd forgets all history up to now, and
    # the API server restarts, so the agent's next watch asks for a resourceVersion nobody has any more.
    agent.pause()
    try:
        cluster.patch("Pod", "pod-a", "shop", {"metadata": {"labels": {"app": "storefront"}}})
        cluster.delete("Service", "web-svc", "shop")
        cluster.compact()
        cluster.stop_apiserver()
        cluster.start_apiserver()
    finally:
        agent.resume()
    external = ("external", "10.96.0.10", "", "", "")
    wanted = with_end(with_app(LAB_TCP, "pod-a", "storefront"), SERVICE, external)
    try:
        agent.wait_series(lambda found: set(found) == wanted, "the relisted state", 30)
        # The exposition is rendered after each poll: the watch's restart shows within a few intervals at most.
        deadline = time.monotonic() + 10
        while True:
            text = agent.metrics()
            expired = sample(text, "khan_inventory_watch_starts_total", resource="pods", reason="expired") or 0
            if expired > (expired_before or 0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert expired > (expired_before or 0), [line for line in text.splitlines() if "watch_starts" in line]
        assert sample(text, "khan_inventory_objects", kind="Service") == 1
    finally:
        cluster.patch("Pod", "pod-a", "shop", {"metadata": {"labels": {"app": "web"}}})
        cluster.create(lab_object("Service", "web-svc"))
    agent.wait_series(lambda found: set(found) == LAB_TCP, "back to the lab's objects")


def odd_objects() -> list[dict[str, Any]]:
    meta: dict[str, Any] = {"namespace": "odd", "labels": {"app": "odd"}}
    container = [{"name": "main", "image": "registry.k8s.io/pause:3.9"}]
    return [
        # Scheduled nowhere and never started: no IP at all.
        {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "name": "pending"}, "spec": {"containers": container}},
        # IPv6 only.
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**meta, "name": "v6-only"},
            "spec": {"containers": container, "nodeName": "node1"},
            "status": {"phase": "Running", "podIP": "fd00:10:244:1::99", "podIPs": [{"ip": "fd00:10:244:1::99"}]},
        },
        # Headless: clusterIP None claims nothing.
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {**meta, "name": "headless"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}], "selector": {"app": "odd"}},
        },
        # No podCIDR, an IPv6 address only, and a hostname address type khan ignores.
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "odd-node", "labels": {"app": "odd"}},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": "fd00:10:250::99"},
                    {"type": "Hostname", "address": "x"},
                ]
            },
        },
    ]


def test_odd_objects_are_indexed_without_harm(world: tuple[Lab, Cluster, Path], agent: RunningAgent) -> None:
    _, cluster, _ = world
    before = agent.metrics()
    objects = odd_objects()
    cluster.ensure_namespace("odd")
    create_lab_objects(cluster, objects)
    try:
        # Four objects, two addresses: the IPv6 pod and the IPv6 node; the rest claim nothing.
        agent.wait_until(
            lambda: (
                sample(agent.metrics(), "khan_inventory_addresses")
                == (sample(before, "khan_inventory_addresses") or 0) + 2
            ),
            3 * INTERVAL + 2,
            "two more addresses",
        )
        text = agent.metrics()
        for kind, more in (("Pod", 2), ("Service", 1), ("Node", 1)):
            assert (
                sample(text, "khan_inventory_objects", kind=kind)
                == (sample(before, "khan_inventory_objects", kind=kind) or 0) + more
            )
        assert set(agent.series()) == LAB_TCP
        assert not samples(text, "khan_kube_api_errors_total")
    finally:
        for obj in objects:
            cluster.delete(obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))


def test_snapshot_lists_once_from_the_api(world: tuple[Lab, Cluster, Path]) -> None:
    lab, cluster, workdir = world
    kubeconfig = cluster.kubeconfig(KHAN_USER, workdir / "snapshot-kubeconfig")
    done = run_in(
        lab,
        "node1",
        [*KHAN, "snapshot", "--kubeconfig", str(kubeconfig), "--node-name", "node1", "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    found = connections(done.stdout, "node1")
    assert {labels for labels in found if labels[-2] == "tcp" and labels[1] != "127.0.0.1"} == LAB_TCP


def test_snapshot_with_an_unusable_kubeconfig_is_one_clear_line(tmp_path: Path) -> None:
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    done = khan(["snapshot", "--kubeconfig", str(broken), "--log-level", "error"])
    assert done.returncode == 1
    assert done.stderr.startswith(f"khan: cannot use --kubeconfig {broken}: "), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
