"""A pod's node, phase and workload (kind and name) as read from the pod alone, and that they do not change identity."""

from __future__ import annotations

import socket
from typing import Any

from khan.inventory.index import build_inventory
from khan.inventory.objects import Owner, project


def packed(address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


def pod(
    name: str,
    owner_references: Any = None,
    labels: dict[str, str] | None = None,
    ip: str = "10.244.1.10",
    node: str = "worker-1",
    phase: str = "Running",
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "shop", "labels": {"app": "web", **(labels or {})}}
    if owner_references is not None:
        metadata["ownerReferences"] = owner_references
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def controller(kind: str, name: str, is_controller: bool | None = True) -> dict[str, Any]:
    reference: dict[str, Any] = {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": f"uid-{name}"}
    if is_controller is not None:
        reference["controller"] = is_controller
    return reference


def owner_of(raw: dict[str, Any]) -> Owner:
    projection = project(raw)
    assert projection is not None
    assert len(projection.claims) == 1
    return projection.claims[0].owner


def workload(raw: dict[str, Any]) -> tuple[str, str]:
    owner = owner_of(raw)
    return owner.workload_kind, owner.workload_name


def test_node_and_phase_come_from_spec_and_status() -> None:
    owner = owner_of(pod("web-1", node="worker-7", phase="Pending"))
    assert (owner.node, owner.phase) == ("worker-7", "Pending")
    assert (owner.type, owner.ns, owner.app, owner.name) == ("pod", "shop", "web", "web-1")


def test_missing_or_junk_node_and_phase_are_empty() -> None:
    raw = pod("web-1")
    raw["spec"] = {"nodeName": 17}
    raw["status"] = {"phase": ["Running"], "podIP": "10.244.1.10"}
    owner = owner_of(raw)
    assert (owner.node, owner.phase) == ("", "")


def test_replica_set_with_matching_template_hash_is_its_deployment() -> None:
    raw = pod("web-7d4b9c-x2k9", [controller("ReplicaSet", "web-7d4b9c")], {"pod-template-hash": "7d4b9c"})
    assert workload(raw) == ("Deployment", "web")


def test_deployment_name_may_itself_contain_dashes() -> None:
    raw = pod("my-web-app-5f6d7-abcde", [controller("ReplicaSet", "my-web-app-5f6d7")], {"pod-template-hash": "5f6d7"})
    assert workload(raw) == ("Deployment", "my-web-app")


def test_replica_set_without_template_hash_stays_a_replica_set() -> None:
    raw = pod("web-7d4b9c-x2k9", [controller("ReplicaSet", "web-7d4b9c")])
    assert workload(raw) == ("ReplicaSet", "web-7d4b9c")


def test_replica_set_whose_name_does_not_end_in_the_hash_stays_a_replica_set() -> None:
    raw = pod("standalone-x2k9", [controller("ReplicaSet", "standalone")], {"pod-template-hash": "7d4b9c"})
    assert workload(raw) == ("ReplicaSet", "standalone")
    # The hash must be a whole "-<hash>" suffix, not merely the name's last characters.
    raw = pod("web7d4b9c-x2k9", [controller("ReplicaSet", "web7d4b9c")], {"pod-template-hash": "7d4b9c"})
    assert workload(raw) == ("ReplicaSet", "web7d4b9c")


def test_stateful_set_and_daemon_set_are_named_as_they_are() -> None:
    assert workload(pod("db-0", [controller("StatefulSet", "db")])) == ("StatefulSet", "db")
    assert workload(pod("proxy-x2k9", [controller("DaemonSet", "proxy")])) == ("DaemonSet", "proxy")


def test_job_is_a_job() -> None:
    assert workload(pod("seed-x2k9", [controller("Job", "seed")])) == ("Job", "seed")


def test_job_named_after_a_schedule_time_is_its_cron_job() -> None:
    assert workload(pod("backup-29012345-x2k9", [controller("Job", "backup-29012345")])) == ("CronJob", "backup")
    assert workload(pod("nightly-report-290123456-q", [controller("Job", "nightly-report-290123456")])) == (
        "CronJob",
        "nightly-report",
    )


def test_job_with_a_short_numeric_suffix_stays_a_job() -> None:
    assert workload(pod("migrate-1234-x2k9", [controller("Job", "migrate-1234")])) == ("Job", "migrate-1234")
    assert workload(pod("b-2901234-x", [controller("Job", "b-2901234")])) == ("Job", "b-2901234")


def test_bare_pod_is_its_own_workload() -> None:
    assert workload(pod("debug")) == ("Pod", "debug")
    assert workload(pod("debug", [])) == ("Pod", "debug")


def test_the_controller_reference_wins_over_other_owners() -> None:
    references = [
        controller("ConfigMap", "settings", is_controller=None),
        controller("Node", "worker-1", is_controller=False),
        controller("StatefulSet", "db"),
        controller("Job", "other", is_controller=False),
    ]
    assert workload(pod("db-0", references)) == ("StatefulSet", "db")


def test_controller_flag_must_be_true_itself() -> None:
    # "true" as a string is not the boolean; with no controller the first reference is taken.
    references = [controller("DaemonSet", "first", is_controller=None), controller("StatefulSet", "db", None)]
    references[1]["controller"] = "true"
    assert workload(pod("db-0", references)) == ("DaemonSet", "first")


def test_owner_references_of_the_wrong_type_make_a_bare_pod() -> None:
    junk: list[Any] = [
        {"kind": "ReplicaSet", "name": "web-7d4b9c", "controller": True},
        "ReplicaSet/web-7d4b9c",
        ["junk", None, 7, "ReplicaSet"],
        [{"kind": "ReplicaSet"}],
        [{"name": "web-7d4b9c", "controller": True}],
        [{"kind": 5, "name": "web-7d4b9c", "controller": True}],
        [{"kind": "ReplicaSet", "name": None, "controller": True}],
        42,
    ]
    for references in junk:
        assert workload(pod("web-7d4b9c-x2k9", references, {"pod-template-hash": "7d4b9c"})) == (
            "Pod",
            "web-7d4b9c-x2k9",
        ), references


def test_junk_entries_beside_a_good_reference_are_ignored() -> None:
    references = [None, "x", 3, controller("StatefulSet", "db")]
    assert workload(pod("db-0", references)) == ("StatefulSet", "db")


def test_custom_controller_kind_is_kept() -> None:
    raw = pod("canary-6c9f-x2k9", [controller("Rollout", "canary")], {"pod-template-hash": "6c9f"})
    assert workload(raw) == ("Rollout", "canary")


def test_equality_and_hash_ignore_node_phase_and_workload() -> None:
    raw = pod("web-7d4b9c-x2k9", [controller("ReplicaSet", "web-7d4b9c")], {"pod-template-hash": "7d4b9c"})
    projected = owner_of(raw)
    plain = Owner("pod", "shop", "web", "web-7d4b9c-x2k9")
    assert (projected.node, projected.phase, projected.workload_kind) == ("worker-1", "Running", "Deployment")
    assert (plain.node, plain.phase, plain.workload_kind, plain.workload_name) == ("", "", "", "")
    assert projected == plain
    assert hash(projected) == hash(plain)
    assert {projected: 1}[plain] == 1
    assert projected != Owner("pod", "shop", "web", "other")
    assert projected != Owner("service", "shop", "web", "web-7d4b9c-x2k9")


def test_inventory_keeps_node_phase_and_workload() -> None:
    inventory = build_inventory(
        [
            pod("web-7d4b9c-x2k9", [controller("ReplicaSet", "web-7d4b9c")], {"pod-template-hash": "7d4b9c"}),
            pod("backup-29012345-q", [controller("Job", "backup-29012345")], ip="10.244.2.5", node="worker-2"),
            pod("debug", ip="fd00:10:244:3::9", node="worker-3", phase="Pending"),
        ]
    )
    web = inventory.owner(packed("10.244.1.10"))
    assert (web.name, web.node, web.phase, web.workload_kind, web.workload_name) == (
        "web-7d4b9c-x2k9",
        "worker-1",
        "Running",
        "Deployment",
        "web",
    )
    backup = inventory.owner(packed("10.244.2.5"))
    assert (backup.node, backup.phase, backup.workload_kind, backup.workload_name) == (
        "worker-2",
        "Running",
        "CronJob",
        "backup",
    )
    debug = inventory.owner(packed("fd00:10:244:3::9"))
    assert (debug.node, debug.phase, debug.workload_kind, debug.workload_name) == (
        "worker-3",
        "Pending",
        "Pod",
        "debug",
    )
