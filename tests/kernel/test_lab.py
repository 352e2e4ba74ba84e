"""The namespace lab builds a real two-node cluster: each demo flow shows up in the nodes' own conntrack tables."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from khan.demo import lab as lab_module
from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.namespaces import LabError, cleanup_stale, private_prefix
from khan.demo.traffic import Expected, start_demo_traffic
from tests.support.netns import run_in

PREFIX = f"kt{os.getpid() % 100000}"


class Entry(NamedTuple):
    transport: str
    src_ip: str
    dst_ip: str
    dst_port: int | None
    reply_src_ip: str
    reply_dst_ip: str
    state: str


def parse_entry(line: str) -> Entry:
    """One line of `conntrack -L -o extended`: the original tuple, the reply tuple's addresses, the state."""
    tokens = line.split()
    transport = tokens[2]
    fields: dict[str, list[str]] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    if transport == "tcp":
        state = tokens[5]
    elif "[UNREPLIED]" in tokens:
        state = "UNREPLIED"
    elif "[ASSURED]" in tokens:
        state = "ASSURED"
    else:
        state = "REPLIED"
    dport = fields.get("dport")
    return Entry(
        transport,
        fields["src"][0],
        fields["dst"][0],
        int(dport[0]) if dport else None,
        fields["src"][1],
        fields["dst"][1],
        state,
    )


def conntrack_table(lab: Lab, node: str) -> list[Entry]:
    entries = []
    for family in ("ipv4", "ipv6"):
        result = run_in(
            lab, node, ["conntrack", "-L", "-f", family, "-o", "extended"], capture_output=True, text=True, check=True
        )
        entries += [parse_entry(line) for line in result.stdout.splitlines() if line.strip()]
    return entries


def lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"{prefix}-")]


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[Lab, list[Expected]]]:
    prefix = f"{PREFIX}d"
    with Lab.create(prefix) as lab:
        yield lab, start_demo_traffic(lab)
    assert lab_namespaces(prefix) == []


def find(table: list[Entry], expected: Expected) -> Entry | None:
    for entry in table:
        if (entry.transport, entry.src_ip, entry.dst_ip, entry.dst_port) == (
            expected.transport,
            expected.src_ip,
            expected.dst_ip,
            expected.dst_port,
        ):
            return entry
    return None


def test_every_demo_flow_is_in_its_nodes_tables_with_its_state(demo: tuple[Lab, list[Expected]]) -> None:
    lab, expected = demo
    tables = {node: conntrack_table(lab, node) for node in ("node1", "node2")}
    missing = [e for e in expected if (entry := find(tables[e.node], e)) is None or entry.state != e.state]
    assert missing == [], f"not in the tables as expected: {missing}\n{tables}"
    assert {e.kind for e in expected} == {
        "pod to pod, same node",
        "pod to pod, across nodes",
        "pod to ClusterIP, DNAT to pod-b",
        "node's bridge gateway to pod",
        "node to pod on another node",
        "client outside the cluster to pod",
        "pod to hostNetwork pod",
        "pod to pod over IPv6",
        "UDP pod to pod with a reply",
    }
    assert len(expected) == 13


def test_cluster_ip_flow_is_answered_by_the_backend_pod(demo: tuple[Lab, list[Expected]]) -> None:
    lab, _ = demo
    entries = [e for e in conntrack_table(lab, "node1") if e.dst_ip == "10.96.0.10"]
    assert [(e.reply_src_ip, e.reply_dst_ip) for e in entries] == [("10.244.1.11", "10.244.1.10")]


def test_outside_client_is_not_masqueraded(demo: tuple[Lab, list[Expected]]) -> None:
    lab, _ = demo
    entries = [e for e in conntrack_table(lab, "node1") if e.src_ip == "192.0.2.10"]
    assert [(e.reply_src_ip, e.reply_dst_ip) for e in entries] == [("10.244.1.10", "192.0.2.10")]


def test_udp_without_reply_stays_unreplied(demo: tuple[Lab, list[Expected]]) -> None:
    lab, _ = demo
    lab.listen_udp("pod-b", "10.244.1.11", 5353)
    lab.udp_exchange("pod-a", "10.244.1.11", 5353, reply=False)
    entries = [e for e in conntrack_table(lab, "node1") if e.dst_port == 5353]
    assert [e.state for e in entries] == ["UNREPLIED"]


def test_sockets_are_created_inside_the_host_namespace(demo: tuple[Lab, list[Expected]]) -> None:
    lab, _ = demo
    with pytest.raises(LabError, match="cannot listen"):
        lab.listen_tcp("pod-a", "10.244.1.11", 9999)  # pod-b's address does not exist in pod-a
    result = run_in(lab, "pod-a", ["ip", "-brief", "addr", "show", "dev", "eth0"], capture_output=True, text=True)
    assert "10.244.1.10/24" in result.stdout


def test_namespaces_are_deleted_when_the_block_raises() -> None:
    prefix = f"{PREFIX}r"
    seen: list[str] = []

    def build_and_fail() -> None:
        with Lab.create(prefix) as lab:
            seen.extend(lab_namespaces(prefix))
            start_demo_traffic(lab)
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        build_and_fail()
    assert len(seen) == 6
    assert lab_namespaces(prefix) == []


def test_namespaces_are_deleted_when_set_up_fails_half_way(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"{PREFIX}f"
    monkeypatch.setattr(lab_module, "NODE_RULESET", "table ip khanlab { chain broken { nonsense } }")
    with pytest.raises(LabError, match=r"^lab set-up failed: ip netns exec .*-node1"), Lab.create(prefix):
        pass
    assert lab_namespaces(prefix) == []


def test_left_over_namespaces_stop_set_up_and_cleanup_stale_removes_them() -> None:
    prefix = f"{PREFIX}s"
    subprocess.run(["ip", "netns", "add", f"{prefix}-node1"], check=True)
    try:
        with pytest.raises(LabError, match="already exist"), Lab.create(prefix):
            pass
        assert lab_namespaces(prefix) == [f"{prefix}-node1"]  # not ours to delete
        assert cleanup_stale(prefix) == [f"{prefix}-node1"]
        assert lab_namespaces(prefix) == []
    finally:
        cleanup_stale(prefix)


def test_a_private_prefix_removes_labs_of_gone_processes_and_keeps_running_ones() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid names a process that no longer runs
    stem = f"{PREFIX}o"
    orphan, running = f"{stem}{gone.pid}-node1", f"{stem}{os.getppid()}-node1"
    for name in (orphan, running):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert private_prefix(stem) == f"{stem}{os.getpid()}"
        assert lab_namespaces(f"{stem}{gone.pid}") == []  # killed before its teardown: deleted
        assert lab_namespaces(f"{stem}{os.getppid()}") == [running]  # another run's lab, still in use: kept
    finally:
        cleanup_stale(f"{stem}{gone.pid}")
        cleanup_stale(f"{stem}{os.getppid()}")


def test_set_up_without_root_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match=r"^network namespaces need root"), Lab.create(f"{PREFIX}u"):
        pass


def test_inventory_is_a_kubectl_list(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    write_inventory(path)
    document = yaml.safe_load(path.read_text())
    assert (document["apiVersion"], document["kind"]) == ("v1", "List")
    items = {
        (item["kind"], item["metadata"].get("namespace"), item["metadata"]["name"]): item for item in document["items"]
    }
    assert set(items) == {
        ("Node", None, "node1"),
        ("Node", None, "node2"),
        ("Pod", "shop", "pod-a"),
        ("Pod", "shop", "pod-b"),
        ("Pod", "shop", "pod-c"),
        ("Pod", "shop", "old-job-x7k2p"),
        ("Pod", "monitoring", "node-exporter-abcde"),
        ("Service", "shop", "web-svc"),
    }
    assert items[("Node", None, "node2")]["spec"]["podCIDRs"] == ["10.244.2.0/24", "fd00:10:244:2::/64"]
    assert items[("Node", None, "node1")]["status"]["addresses"][0] == {"type": "InternalIP", "address": "10.250.0.1"}
    pod_a, old_job = items[("Pod", "shop", "pod-a")], items[("Pod", "shop", "old-job-x7k2p")]
    assert pod_a["status"]["podIPs"] == [{"ip": "10.244.1.10"}, {"ip": "fd00:10:244:1::10"}]
    assert old_job["status"] == old_job["status"] | {"phase": "Succeeded", "podIP": "10.244.1.10"}
    assert old_job["metadata"]["creationTimestamp"] < pod_a["metadata"]["creationTimestamp"]
    exporter = items[("Pod", "monitoring", "node-exporter-abcde")]
    assert exporter["spec"]["hostNetwork"] is True
    assert exporter["status"]["podIP"] == "10.250.0.1"
    service = items[("Service", "shop", "web-svc")]["spec"]
    assert service["clusterIPs"] == ["10.96.0.10"]
    assert service["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    assert service["selector"] == {"app.kubernetes.io/name": "api"}
    assert len({item["metadata"]["uid"] for item in document["items"]}) == len(document["items"])
