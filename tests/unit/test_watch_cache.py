"""The watch cache: lists and events change what addresses resolve to, deleted pods linger for their grace period
and no longer, and the inventory is rebuilt only when something changed."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from khan.inventory.index import Inventory
from khan.inventory.objects import EXTERNAL, NODE, POD, SERVICE, Owner, Projection, project
from khan.inventory.watch_cache import ADDED, DELETED, MODIFIED, WatchCache

GRACE = 30.0


def packed(address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


def fake_clock(start: float = 1000.0) -> tuple[list[float], Callable[[], float]]:
    """A clock that moves only when the test sets now[0]."""
    now = [start]
    return now, lambda: now[0]


def projected(raw: dict[str, Any]) -> Projection:
    projection = project(raw)
    assert projection is not None
    return projection


def pod(
    name: str,
    ip: str,
    app: str = "web",
    phase: str = "Running",
    ns: str = "shop",
    created: str = "2024-05-01T10:00:00Z",
) -> Projection:
    return projected(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}, "creationTimestamp": created},
            "spec": {"nodeName": "worker-1"},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
        }
    )


def service(name: str, ip: str, ns: str = "shop") -> Projection:
    return projected({"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip}})


def node(name: str, ip: str) -> Projection:
    return projected(
        {"kind": "Node", "metadata": {"name": name}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}
    )


def keyed(*projections: Projection) -> list[Projection]:
    return list(projections)


def name_at(inventory: Inventory, address: str) -> Owner:
    return inventory.owner(packed(address))


def test_replace_then_inventory_resolves_every_kind() -> None:
    cache = WatchCache(GRACE)
    cache.replace(POD, keyed(pod("web-1", "10.244.1.1"), pod("web-2", "10.244.1.2")))
    cache.replace(SERVICE, keyed(service("api", "10.96.0.10")))
    cache.replace(NODE, keyed(node("worker-1", "192.168.0.11")))
    inventory = cache.inventory()
    assert name_at(inventory, "10.244.1.1") == Owner("pod", "shop", "web", "web-1")
    assert name_at(inventory, "10.244.1.2") == Owner("pod", "shop", "web", "web-2")
    assert name_at(inventory, "10.96.0.10") == Owner("service", "shop", "", "api")
    assert name_at(inventory, "192.168.0.11") == Owner("node", "", "", "worker-1")
    assert name_at(inventory, "10.244.1.3") == EXTERNAL
    assert dict(inventory.objects) == {NODE: 1, POD: 2, SERVICE: 1}
    assert (cache.count(POD), cache.count(SERVICE), cache.count(NODE)) == (2, 1, 1)


def test_empty_cache_knows_nothing() -> None:
    cache = WatchCache(GRACE)
    inventory = cache.inventory()
    assert len(inventory) == 0
    assert dict(inventory.objects) == {NODE: 0, POD: 0, SERVICE: 0}
    assert cache.lingering == 0


def test_added_and_modified_events_set_the_owner() -> None:
    cache = WatchCache(GRACE)
    cache.replace(POD, {})
    cache.apply(ADDED, pod("web-1", "10.244.1.1", app="web"))
    assert name_at(cache.inventory(), "10.244.1.1").app == "web"
    cache.apply(MODIFIED, pod("web-1", "10.244.1.1", app="shop-frontend"))
    inventory = cache.inventory()
    assert name_at(inventory, "10.244.1.1") == Owner("pod", "shop", "shop-frontend", "web-1")
    assert name_at(inventory, "10.244.1.1").app == "shop-frontend"
    assert cache.count(POD) == 1


def test_modified_pod_with_a_new_ip_releases_the_old_one() -> None:
    cache = WatchCache(GRACE)
    cache.apply(ADDED, pod("web-1", "10.244.1.1"))
    cache.apply(MODIFIED, pod("web-1", "10.244.1.9"))
    inventory = cache.inventory()
    assert name_at(inventory, "10.244.1.9").name == "web-1"
    assert name_at(inventory, "10.244.1.1") == EXTERNAL
    assert cache.lingering == 0


def test_deleted_pod_lingers_until_its_grace_elapses() -> None:
    now, timer = fake_clock()
    cache = WatchCache(GRACE, timer=timer)
    web = pod("web-1", "10.244.1.1")
    cache.replace(POD, keyed(web))
    cache.apply(DELETED, web)
    assert cache.count(POD) == 0
    assert cache.lingering == 1
    inventory = cache.inventory()
    assert name_at(inventory, "10.244.1.1") == Owner("pod", "shop", "web", "web-1")
    assert name_at(inventory, "10.244.1.1").phase == "Running"
    # Lingering pods are not live objects.
    assert inventory.objects[POD] == 0

    now[0] += GRACE - 1
    assert name_at(cache.inventory(), "10.244.1.1") == Owner("pod", "shop", "web", "web-1")

    now[0] += 2
    assert name_at(cache.inventory(), "10.244.1.1") == EXTERNAL
    assert cache.lingering == 0


def test_expiry_seen_first_by_a_scrape_still_rebuilds_the_inventory() -> None:
    # A /metrics scrape reads `lingering` between the end of the grace and the next poll; the poll must still
    # see the pod gone.
    now, timer = fake_clock()
    cache = WatchCache(GRACE, timer=timer)
    web = pod("web-1", "10.244.1.1")
    cache.replace(POD, keyed(web))
    cache.apply(DELETED, web)
    assert name_at(cache.inventory(), "10.244.1.1") == Owner("pod", "shop", "web", "web-1")
    now[0] += GRACE + 1
    assert cache.lingering == 0
    assert name_at(cache.inventory(), "10.244.1.1") == EXTERNAL


def test_new_pod_on_a_deleted_pods_ip_wins_at_once() -> None:
    now, timer = fake_clock()
    cache = WatchCache(GRACE, timer=timer)
    old = pod("old", "10.244.1.1", app="old-app")
    cache.replace(POD, keyed(old))
    cache.apply(DELETED, old)
    cache.apply(ADDED, pod("new", "10.244.1.1", app="new-app"))
    assert cache.lingering == 1  # still remembered, but outranked
    assert name_at(cache.inventory(), "10.244.1.1") == Owner("pod", "shop", "new-app", "new")
    now[0] += GRACE + 1
    assert name_at(cache.inventory(), "10.244.1.1") == Owner("pod", "shop", "new-app", "new")


def test_pod_recreated_under_its_old_name_is_live_again() -> None:
    now, timer = fake_clock()
    cache = WatchCache(GRACE, timer=timer)
    db = pod("db-0", "10.244.1.5")
    cache.apply(ADDED, db)
    cache.apply(DELETED, db)
    assert cache.lingering == 1
    cache.apply(ADDED, pod("db-0", "10.244.1.6"))
    assert cache.lingering == 0
    assert cache.count(POD) == 1
    inventory = cache.inventory()
    assert name_at(inventory, "10.244.1.6").name == "db-0"
    # The old IP was the lingering projection's, which the live pod replaced.
    assert name_at(inventory, "10.244.1.5") == EXTERNAL
    # Recreated, it does not expire with the old grace.
    now[0] += GRACE + 1
    assert name_at(cache.inventory(), "10.244.1.6").name == "db-0"


def test_lingering_counts_each_deleted_pod() -> None:
    now, timer = fake_clock()
    cache = WatchCache(GRACE, timer=timer)
    pods = [pod(f"web-{index}", f"10.244.1.{index}") for index in range(1, 4)]
    for each in pods:
        cache.apply(ADDED, each)
    cache.apply(DELETED, pods[0])
    now[0] += 10
    cache.apply(DELETED, pods[1])
    assert cache.lingering == 2
    # The first one's grace ends before the second one's.
    now[0] += GRACE - 5
    inventory = cache.inventory()
    assert name_at(inventory, "10.244.1.1") == EXTERNAL
    assert name_at(inventory, "10.244.1.2").name == "web-2"
    assert name_at(inventory, "10.244.1.3").name == "web-3"
    assert cache.lingering == 1


def test_deleted_pod_without_an_ip_does_not_linger() -> None:
    cache = WatchCache(GRACE)
    pending = projected({"kind": "Pod", "metadata": {"name": "pending", "namespace": "shop"}})
    assert pending.claims == ()
    cache.apply(ADDED, pending)
    cache.apply(DELETED, pending)
    assert cache.lingering == 0


def test_zero_grace_forgets_a_deleted_pod_at_once() -> None:
    cache = WatchCache(0)
    web = pod("web-1", "10.244.1.1")
    cache.apply(ADDED, web)
    assert name_at(cache.inventory(), "10.244.1.1").name == "web-1"
    cache.apply(DELETED, web)
    assert cache.lingering == 0
    assert name_at(cache.inventory(), "10.244.1.1") == EXTERNAL


def test_deleted_service_and_node_do_not_linger() -> None:
    cache = WatchCache(GRACE)
    api = service("api", "10.96.0.10")
    worker = node("worker-1", "192.168.0.11")
    cache.replace(SERVICE, keyed(api))
    cache.replace(NODE, keyed(worker))
    cache.apply(DELETED, api)
    cache.apply(DELETED, worker)
    assert cache.lingering == 0
    inventory = cache.inventory()
    assert name_at(inventory, "10.96.0.10") == EXTERNAL
    assert name_at(inventory, "192.168.0.11") == EXTERNAL
    assert dict(inventory.objects) == {NODE: 0, POD: 0, SERVICE: 0}


def test_pod_missing_from_a_new_list_lingers() -> None:
    now, timer = fake_clock()
    cache = WatchCache(GRACE, timer=timer)
    kept, vanished = pod("kept", "10.244.1.1"), pod("vanished", "10.244.1.2")
    cache.replace(POD, keyed(kept, vanished))
    cache.replace(POD, keyed(kept))
    assert cache.lingering == 1
    inventory = cache.inventory()
    assert name_at(inventory, "10.244.1.2").name == "vanished"
    assert inventory.objects[POD] == 1
    now[0] += GRACE + 1
    assert name_at(cache.inventory(), "10.244.1.2") == EXTERNAL
    assert cache.lingering == 0


def test_pod_back_in_a_new_list_stops_lingering() -> None:
    cache = WatchCache(GRACE)
    web = pod("web-1", "10.244.1.1")
    cache.apply(ADDED, web)
    cache.apply(DELETED, web)
    assert cache.lingering == 1
    cache.replace(POD, keyed(pod("web-1", "10.244.1.1")))
    assert cache.lingering == 0
    assert cache.count(POD) == 1


def test_service_missing_from_a_new_list_is_gone_at_once() -> None:
    cache = WatchCache(GRACE)
    cache.replace(SERVICE, keyed(service("a", "10.96.0.1"), service("b", "10.96.0.2")))
    cache.replace(SERVICE, keyed(service("b", "10.96.0.2")))
    assert cache.lingering == 0
    inventory = cache.inventory()
    assert name_at(inventory, "10.96.0.1") == EXTERNAL
    assert name_at(inventory, "10.96.0.2").name == "b"


def test_replace_is_one_step() -> None:
    cache = WatchCache(GRACE)
    cache.replace(SERVICE, keyed(service("a", "10.96.0.1"), service("b", "10.96.0.2"), service("c", "10.96.0.3")))
    cache.apply(ADDED, service("d", "10.96.0.4"))
    assert cache.count(SERVICE) == 4
    cache.replace(SERVICE, keyed(service("c", "10.96.0.33"), service("e", "10.96.0.5")))
    assert cache.count(SERVICE) == 2
    inventory = cache.inventory()
    assert inventory.objects[SERVICE] == 2
    assert len(inventory) == 2
    for gone in ("10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.4"):
        assert name_at(inventory, gone) == EXTERNAL
    assert name_at(inventory, "10.96.0.33").name == "c"
    assert name_at(inventory, "10.96.0.5").name == "e"


def test_replace_of_one_kind_leaves_the_others() -> None:
    cache = WatchCache(GRACE)
    cache.replace(POD, keyed(pod("web-1", "10.244.1.1")))
    cache.replace(SERVICE, keyed(service("api", "10.96.0.10")))
    cache.replace(SERVICE, {})
    inventory = cache.inventory()
    assert name_at(inventory, "10.244.1.1").name == "web-1"
    assert dict(inventory.objects) == {NODE: 0, POD: 1, SERVICE: 0}


def test_replace_keeps_no_reference_to_the_callers_mapping() -> None:
    cache = WatchCache(GRACE)
    listed = keyed(service("api", "10.96.0.10"))
    cache.replace(SERVICE, listed)
    listed.clear()
    assert cache.count(SERVICE) == 1
    assert name_at(cache.inventory(), "10.96.0.10").name == "api"


def test_inventory_is_rebuilt_only_after_a_change() -> None:
    now, timer = fake_clock()
    cache = WatchCache(GRACE, timer=timer)
    web = pod("web-1", "10.244.1.1")
    cache.replace(POD, keyed(web))
    first = cache.inventory()
    assert cache.inventory() is first
    now[0] += 5
    assert cache.inventory() is first

    cache.apply(MODIFIED, pod("web-1", "10.244.1.1", app="other"))
    second = cache.inventory()
    assert second is not first
    assert cache.inventory() is second
    assert name_at(first, "10.244.1.1").app == "web"  # an inventory never changes once built
    assert name_at(second, "10.244.1.1").app == "other"

    cache.apply(DELETED, web)
    third = cache.inventory()
    assert third is not second
    now[0] += GRACE - 1
    assert cache.inventory() is third

    now[0] += 2  # the deleted pod's grace ends: nothing was applied, but the inventory changes
    fourth = cache.inventory()
    assert fourth is not third
    assert name_at(third, "10.244.1.1").name == "web-1"
    assert name_at(fourth, "10.244.1.1") == EXTERNAL
    assert cache.inventory() is fourth


def test_running_pod_beats_a_finished_pod_on_one_ip() -> None:
    cache = WatchCache(GRACE)
    # The finished job is newer, which alone would win; being finished, it loses.
    cache.apply(ADDED, pod("job-done", "10.244.1.7", phase="Succeeded", created="2024-05-01T11:00:00Z"))
    cache.apply(ADDED, pod("live", "10.244.1.7", phase="Running", created="2024-05-01T09:00:00Z"))
    owner = name_at(cache.inventory(), "10.244.1.7")
    assert owner == Owner("pod", "shop", "web", "live")
    assert owner.phase == "Running"
    assert cache.inventory().objects[POD] == 2


def test_max_lingering_bounds_the_deleted_pods_remembered() -> None:
    now, timer = fake_clock()
    cache = WatchCache(GRACE, max_lingering=2, timer=timer)
    pods = [pod(f"web-{index}", f"10.244.1.{index}") for index in range(1, 4)]
    for each in pods:
        cache.apply(ADDED, each)
    for each in pods:
        now[0] += 1
        cache.apply(DELETED, each)
    assert cache.lingering == 2
    inventory = cache.inventory()
    # The oldest deletion is the one forgotten.
    assert name_at(inventory, "10.244.1.1") == EXTERNAL
    assert name_at(inventory, "10.244.1.2").name == "web-2"
    assert name_at(inventory, "10.244.1.3").name == "web-3"
