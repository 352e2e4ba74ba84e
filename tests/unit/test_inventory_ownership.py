"""Who wins an address several objects claim, whatever order the objects arrive in."""

from __future__ import annotations

import itertools
import socket
from typing import Any

from khan.inventory.index import EXTERNAL, Owner, build_inventory

REUSED_IP = "10.244.1.23"
CONTESTED_IP = "10.0.0.1"


def packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, address)


def pod(name: str, phase: str, ip: str, created: str = "2024-05-01T10:00:00Z", ns: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created, "labels": {"app": name}},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
    }


# A finished job keeps its IP in status; the IP has since gone to a live pod.
RUNNING = pod("live", "Running", REUSED_IP, created="2024-05-01T09:00:00Z")
SUCCEEDED = pod("job-done", "Succeeded", REUSED_IP, created="2024-05-01T11:00:00Z")
PENDING = pod("starting", "Pending", REUSED_IP, created="2024-05-01T08:00:00Z")
FAILED = pod("job-failed", "Failed", REUSED_IP, created="2024-05-01T12:00:00Z")

OLDER = pod("older", "Running", "10.244.1.30", created="2024-05-01T10:00:00Z")
NEWER = pod("newer", "Running", "10.244.1.30", created="2024-05-01T10:00:01Z")
FINISHED_OLDER = pod("finished-older", "Failed", "10.244.1.31", created="2024-05-01T10:00:00Z")
FINISHED_NEWER = pod("finished-newer", "Succeeded", "10.244.1.31", created="2024-05-01T10:30:00Z")
TWIN_A = pod("twin-a", "Running", "10.244.1.32", ns="z")
TWIN_B = pod("twin-b", "Running", "10.244.1.32", ns="z")

# One address claimed by every kind of owner, listed from the strongest claim to the weakest.
LADDER: list[tuple[dict[str, Any], Owner]] = [
    (
        {"kind": "Service", "metadata": {"name": "svc", "namespace": "net"}, "spec": {"clusterIP": CONTESTED_IP}},
        Owner("service", "net", "", "svc"),
    ),
    (
        {
            "kind": "Node",
            "metadata": {"name": "node-b"},
            "status": {"addresses": [{"type": "InternalIP", "address": CONTESTED_IP}]},
        },
        Owner("node", "", "", "node-b"),
    ),
    (pod("running", "Running", CONTESTED_IP), Owner("pod", "shop", "running", "running")),
    (
        {"kind": "Node", "metadata": {"name": "node-c"}, "spec": {"podCIDRs": ["10.0.0.0/24"]}},
        Owner("gateway", "", "", "node-c"),
    ),
    (
        {"kind": "Node", "metadata": {"name": "node-d"}, "spec": {"podCIDRs": ["10.0.0.1/32"]}},
        Owner("network", "", "", "node-d"),
    ),
    (pod("finished", "Succeeded", CONTESTED_IP), Owner("pod", "shop", "finished", "finished")),
]


def test_running_pod_beats_finished_pod_in_both_orders() -> None:
    live = Owner("pod", "shop", "live", "live")
    assert build_inventory([RUNNING, SUCCEEDED]).owner(packed(REUSED_IP)) == live
    assert build_inventory([SUCCEEDED, RUNNING]).owner(packed(REUSED_IP)) == live


def test_pending_pod_beats_failed_pod_in_both_orders() -> None:
    starting = Owner("pod", "shop", "starting", "starting")
    assert build_inventory([PENDING, FAILED]).owner(packed(REUSED_IP)) == starting
    assert build_inventory([FAILED, PENDING]).owner(packed(REUSED_IP)) == starting


def test_finished_pod_owns_an_ip_nobody_else_claims() -> None:
    assert build_inventory([SUCCEEDED]).owner(packed(REUSED_IP)) == Owner("pod", "shop", "job-done", "job-done")


def test_between_equal_pods_the_newer_wins() -> None:
    newer = Owner("pod", "shop", "newer", "newer")
    assert build_inventory([OLDER, NEWER]).owner(packed("10.244.1.30")) == newer
    assert build_inventory([NEWER, OLDER]).owner(packed("10.244.1.30")) == newer
    finished_newer = Owner("pod", "shop", "finished-newer", "finished-newer")
    assert build_inventory([FINISHED_OLDER, FINISHED_NEWER]).owner(packed("10.244.1.31")) == finished_newer
    assert build_inventory([FINISHED_NEWER, FINISHED_OLDER]).owner(packed("10.244.1.31")) == finished_newer


def test_between_pods_created_together_name_order_decides() -> None:
    twin_a = Owner("pod", "z", "twin-a", "twin-a")
    assert build_inventory([TWIN_A, TWIN_B]).owner(packed("10.244.1.32")) == twin_a
    assert build_inventory([TWIN_B, TWIN_A]).owner(packed("10.244.1.32")) == twin_a


def test_ranking_holds_in_every_input_order() -> None:
    # Drop the winner each round; what is left must yield the next rung, however it is ordered.
    for rung, (_, expected) in enumerate(LADDER):
        claimants = [obj for obj, _ in LADDER[rung:]]
        for order in itertools.permutations(claimants):
            assert build_inventory(order).owner(packed(CONTESTED_IP)) == expected, (rung, order)
    assert build_inventory([]).owner(packed(CONTESTED_IP)) == EXTERNAL
