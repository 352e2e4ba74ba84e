"""Declared connection limits (khan.io/max-connections): parsing, which objects count, the label values under
each aggregation (as khan_connection spells the destination), the bound, and the families served."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from khan.attribution.connections import attribute
from khan.attribution.labels import MAX_LABEL_VALUE_BYTES, LabelPolicy
from khan.attribution.limits import bounded, declared_limits
from khan.attribution.schema import ConnectionLabels, LimitLabels
from khan.conntrack.decode import IPPROTO_TCP
from khan.inventory import limits
from khan.inventory.from_file import load_inventory
from khan.inventory.index import build_inventory
from khan.inventory.limits import ANNOTATION, INVALID, MAX_LIMIT, parse_limit
from khan.inventory.objects import Limit, project
from khan.inventory.source import FileInventory
from khan.inventory.watch_cache import DELETED, MODIFIED, WatchCache
from khan.metrics.collector import KhanCollector
from khan.polling.result import Health, PollResult
from tests.support import paths

WORKLOAD = LabelPolicy(aggregate="workload")
POD = LabelPolicy(aggregate="pod")
FIXTURE = paths.FIXTURES / "inventory" / "connection-limits.yaml"


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with nothing logged yet (the rate limit is process-wide)."""
    monkeypatch.setattr(limits, "_warnings", limits._InvalidLimitWarnings())


def pod(
    name: str,
    limit: object = None,
    *,
    ip: str = "10.244.1.10",
    phase: str = "Running",
    replica_set: str | None = None,
    host_network: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "shop", "labels": {"app": "db"}}
    if limit is not None:
        metadata["annotations"] = {ANNOTATION: limit, "other.example/huge": "x" * 10_000}
    if replica_set is not None:
        metadata["labels"]["pod-template-hash"] = replica_set.rsplit("-", 1)[1]
        reference = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set, "controller": True}
        metadata["ownerReferences"] = [reference]
    spec: dict[str, Any] = {"nodeName": "node1", "hostNetwork": host_network}
    return {"kind": "Pod", "metadata": metadata, "spec": spec, "status": {"phase": phase, "podIP": ip}}


def service(name: str, limit: object = None, cluster_ip: str = "10.96.0.10") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "shop"}
    if limit is not None:
        metadata["annotations"] = {ANNOTATION: limit}
    return {"kind": "Service", "metadata": metadata, "spec": {"clusterIP": cluster_ip}}


def limit_of(raw: dict[str, Any]) -> Limit | None:
    projection = project(raw)
    assert projection is not None
    return projection.limit


# -- parsing ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100", 100),
        ("1", 1),
        (" 250\n", 250),  # blanks around are forgiven
        ("0100", 100),
        (str(MAX_LIMIT), MAX_LIMIT),
        (100, 100),  # an unquoted number in a hand-written file
    ],
)
def test_a_positive_whole_number_is_a_limit(value: object, expected: int) -> None:
    assert parse_limit(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "0",
        "-5",
        "+5",
        "1_000",
        "1e3",
        "10.5",
        "0x10",
        "100 connections",
        "\u0661\u0660\u0660",  # Arabic-Indic digits: int() would take them
        str(MAX_LIMIT + 1),
        "9" * 5000,  # absurdly large, and no int() of 5,000 digits
        0,
        -3,
        10**30,
        True,
        None,
        1.5,
        ["100"],
        {"max": 100},
    ],
)
def test_anything_else_is_invalid(value: object) -> None:
    assert parse_limit(value) == INVALID


# -- which objects declare a limit ---------------------------------------------------------------------------------


def test_services_and_live_pods_declare_their_limit() -> None:
    limit = limit_of(service("db-svc", "300"))
    assert limit is not None
    assert (limit.owner.type, limit.owner.name, limit.value) == ("service", "db-svc", 300)
    for phase in ("Running", "Pending", ""):
        limit = limit_of(pod("db-0", "100", phase=phase))
        assert limit is not None
        assert limit.value == 100


def test_unannotated_finished_and_host_network_pods_declare_nothing() -> None:
    for raw in (
        pod("db-0"),
        pod("db-0", "100", phase="Succeeded"),
        pod("db-0", "100", phase="Failed"),
        pod("db-0", "100", host_network=True),  # its connections are its node's: no pod series to join
        service("db-svc"),
    ):
        assert limit_of(raw) is None, raw


def test_only_the_number_is_kept() -> None:
    projection = project(pod("db-0", "100"))
    assert projection is not None
    assert projection.limit is not None
    assert projection.limit._fields == ("owner", "value")
    assert "annotations" not in repr(projection)


def test_a_bad_value_is_counted_and_named_in_a_warning_never_raised() -> None:
    with capture_logs() as lines:
        inventory = build_inventory([service("db-svc", "lots"), pod("db-0", "-1"), pod("db-1", "5", ip="10.244.1.11")])
    assert inventory.invalid_limits == 2
    assert [(limit.owner.name, limit.value) for limit in inventory.limits] == [("db-1", 5)]
    warned = [line for line in lines if line["event"] == "connection_limit_invalid"]
    assert [(line["kind"], line["namespace"], line["name"], line["value"]) for line in warned] == [
        ("Service", "shop", "db-svc", "'lots'"),
        ("Pod", "shop", "db-0", "'-1'"),
    ]
    assert warned[0]["log_level"] == "warning"


def test_warnings_are_rate_limited_per_object_and_overall() -> None:
    with capture_logs() as lines:
        for _ in range(5):  # a pod's status updates re-project it: one line, not five
            project(pod("db-0", "many"))
        for index in range(100):  # a relist of a bad template's 100 replicas: ten lines
            project(pod(f"web-{index}", "many"))
    warned = [line for line in lines if line["event"] == "connection_limit_invalid"]
    assert len(warned) == limits.WARNINGS_PER_MINUTE
    assert sum(line["name"] == "db-0" for line in warned) == 1


def test_a_hostile_value_is_cut_in_the_warning() -> None:
    with capture_logs() as lines:
        project(service("db-svc", "\x1b[31m" + "y" * 100_000))
    (line,) = lines
    assert len(line["value"]) < 300


# -- label values, as khan_connection spells the destination --------------------------------------------------------


def replicas() -> list[dict[str, Any]]:
    return [
        pod("db-7d4b9-aaaaa", "100", ip="10.244.1.10", replica_set="db-7d4b9"),
        pod("db-7d4b9-bbbbb", "100", ip="10.244.1.11", replica_set="db-7d4b9"),
        pod("db-7d4b9-ccccc", "50", ip="10.244.1.12", replica_set="db-7d4b9"),
        pod("db-7d4b9-old", "100", ip="10.244.1.13", replica_set="db-7d4b9", phase="Succeeded"),
        pod("cache-0", "20", ip="10.244.1.20"),  # a bare pod: its own workload
        service("db-svc", "250"),
    ]


def test_pod_aggregation_names_each_pod() -> None:
    assert declared_limits(build_inventory(replicas()), POD) == {
        ("pod", "shop", "db-7d4b9-aaaaa"): 100,
        ("pod", "shop", "db-7d4b9-bbbbb"): 100,
        ("pod", "shop", "db-7d4b9-ccccc"): 50,
        ("pod", "shop", "cache-0"): 20,
        ("service", "shop", "db-svc"): 250,
    }


def test_workload_aggregation_sums_the_live_replicas() -> None:
    assert declared_limits(build_inventory(replicas()), WORKLOAD) == {
        ("pod", "shop", "db"): 250,  # the Deployment's three live pods; the finished one counts for nothing
        ("pod", "shop", "cache-0"): 20,
        ("service", "shop", "db-svc"): 250,  # a Service's limit is the Service's, whatever the policy
    }


@pytest.mark.parametrize("policy", [POD, WORKLOAD])
def test_limit_labels_are_the_destination_labels_of_khan_connection(policy: LabelPolicy) -> None:
    """The same inventory through both: every limit's (dst_type, dst_ns, dst_name) is a khan_connection dst."""
    inventory = build_inventory(replicas())
    counts = {
        (IPPROTO_TCP, socket.inet_aton("10.0.0.1"), socket.inet_aton(dst), 5432, 3, 0, socket.inet_aton(dst)): 1
        for dst in ("10.244.1.10", "10.244.1.11", "10.244.1.12", "10.244.1.20", "10.96.0.10")
    }
    destinations = {
        (named.dst_type, named.dst_ns, named.dst_name)
        for named in map(ConnectionLabels._make, attribute(counts, inventory, "node1", policy))
    }
    assert set(declared_limits(inventory, policy)) == destinations
    assert LimitLabels._fields == ("dst_type", "dst_ns", "dst_name")


def test_long_names_are_capped_as_in_khan_connection() -> None:
    long_name = "d" * 300  # the API would refuse it; a file inventory holds what its author wrote
    inventory = build_inventory([service(long_name, "10")])
    ((labels, value),) = declared_limits(inventory, POD).items()
    assert len(labels[2]) == MAX_LABEL_VALUE_BYTES
    assert value == 10
    counts = {(IPPROTO_TCP, socket.inet_aton("10.0.0.1"), socket.inet_aton("10.96.0.10"), 80, 3, 0, b"")}
    (connection,) = attribute(dict.fromkeys(counts, 1), inventory, "node1")
    assert ConnectionLabels._make(connection).dst_name == labels[2]


def test_deleted_pods_stop_counting_at_once_though_their_addresses_linger() -> None:
    cache = WatchCache(deleted_pod_grace_seconds=120)
    projections = [p for p in map(project, replicas()) if p is not None and p.kind == "Pod"]
    cache.replace("Pod", projections)
    assert declared_limits(cache.inventory(), WORKLOAD)[("pod", "shop", "db")] == 250
    gone = project(pod("db-7d4b9-ccccc", "50", ip="10.244.1.12", replica_set="db-7d4b9"))
    assert gone is not None
    cache.apply(DELETED, gone)
    inventory = cache.inventory()
    assert inventory.owner(socket.inet_aton("10.244.1.12")).name == "db-7d4b9-ccccc"  # lingering
    assert declared_limits(inventory, WORKLOAD)[("pod", "shop", "db")] == 200
    finished = project(pod("db-7d4b9-bbbbb", "100", ip="10.244.1.11", replica_set="db-7d4b9", phase="Failed"))
    assert finished is not None
    cache.apply(MODIFIED, finished)
    assert declared_limits(cache.inventory(), WORKLOAD)[("pod", "shop", "db")] == 100


def test_an_annotation_edit_replaces_the_limit_and_its_removal_drops_it() -> None:
    cache = WatchCache(deleted_pod_grace_seconds=120)
    for limit in ("100", "150", None, "oops"):
        projection = project(service("db-svc", limit))
        assert projection is not None
        cache.apply(MODIFIED, projection)
        served = declared_limits(cache.inventory(), POD)
        expected = {("service", "shop", "db-svc"): int(limit)} if limit and limit.isdigit() else {}
        assert served == expected
    assert cache.inventory().invalid_limits == 1


def test_the_series_are_bounded_by_max_series_in_a_fixed_order() -> None:
    series = {("pod", "shop", f"db-{index:03d}"): index + 1 for index in range(150)}
    kept, dropped = bounded(series, 100)
    assert (len(kept), dropped) == (100, 50)
    assert max(kept) == ("pod", "shop", "db-099")
    assert bounded(series, None) == (series, 0)
    assert bounded(series, 150) == (series, 0)


# -- the file inventory ------------------------------------------------------------------------------------------


def test_the_file_inventory_reads_the_annotation() -> None:
    with capture_logs() as lines:
        inventory = load_inventory(FIXTURE)
    assert declared_limits(inventory, WORKLOAD) == {
        ("service", "data", "postgres"): 100,
        ("pod", "data", "postgres"): 200,  # the StatefulSet's two live pods, 100 each
        ("pod", "data", "redis"): 64,  # unquoted in the file
    }
    assert declared_limits(inventory, POD)[("pod", "data", "postgres-1")] == 100
    assert inventory.invalid_limits == 1
    assert [line["name"] for line in lines if line["event"] == "connection_limit_invalid"] == ["broken"]


def test_a_file_reload_picks_up_an_edited_limit(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(FIXTURE.read_text())
    source = FileInventory(str(path))
    source.load()
    assert declared_limits(source.current(), POD)[("service", "data", "postgres")] == 100
    path.write_text(FIXTURE.read_text().replace('max-connections: "100" # postgres-svc', 'max-connections: "40"'))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a later mtime even on a coarse clock
    source.reload_if_changed()
    assert declared_limits(source.current(), POD)[("service", "data", "postgres")] == 40


# -- exposition -------------------------------------------------------------------------------------------------


def exposition(result: PollResult) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KhanCollector(lambda: Health().after(result)))
    return generate_latest(registry).decode()


def test_the_families_are_served_after_a_poll() -> None:
    result = PollResult(
        node="node1",
        connections={},
        entries=0,
        malformed=0,
        interrupted=False,
        duration_seconds=0.1,
        finished_at=1.0,
        table=None,
        limits={("pod", "shop", "db"): 250, ("service", "shop", "db-svc"): 100},
        limits_invalid=2,
        limits_dropped=3,
    )
    text = exposition(result)
    assert 'khan_connection_limit{dst_name="db",dst_ns="shop",dst_type="pod"} 250.0' in text
    assert 'khan_connection_limit{dst_name="db-svc",dst_ns="shop",dst_type="service"} 100.0' in text
    assert 'khan_connection_limits_ignored{reason="invalid"} 2.0' in text
    assert 'khan_connection_limits_ignored{reason="max_series"} 3.0' in text
    empty = exposition(PollResult("node1", {}, 0, 0, False, 0.1, 1.0, None))
    assert "# TYPE khan_connection_limit gauge" in empty
    assert "khan_connection_limit{" not in empty
