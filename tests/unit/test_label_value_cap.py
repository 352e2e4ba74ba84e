"""Label values taken from objects are capped at 253 UTF-8 bytes, so that one odd object cannot make Prometheus
(label_value_length_limit) refuse a node's whole scrape; every value the Kubernetes API accepts passes untouched."""

from __future__ import annotations

import re
import socket
from typing import Any

from khan.attribution.labels import MAX_LABEL_VALUE_BYTES, Attributor, LabelPolicy, capped
from khan.inventory.index import build_inventory

CUT = re.compile(r"~[0-9a-f]{8}$")
LONG_NAME = "x" * 300
TWIN_NAME = "x" * 299 + "y"  # the same first 299 characters


def pod(name: str, ip: str, namespace: str = "shop", app: str = "web", owner: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"app": app}}
    if owner is not None:
        metadata["ownerReferences"] = [{"kind": "StatefulSet", "name": owner, "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "status": {"podIP": ip}}


def packed(address: str) -> bytes:
    return socket.inet_aton(address)


def test_values_kubernetes_accepts_pass_untouched() -> None:
    longest_name = "a" * 253  # a DNS subdomain's limit
    assert capped(longest_name) == longest_name
    inventory = build_inventory([pod(longest_name, "10.244.1.10", namespace="n" * 63, app="w" * 63)])
    end = Attributor(inventory, "node1").end(packed("10.244.1.10"))
    assert end == ("pod", "10.244.1.10", "n" * 63, "w" * 63, longest_name)


def test_longer_values_are_cut_with_a_hash_that_keeps_them_apart() -> None:
    inventory = build_inventory(
        [
            pod(LONG_NAME, "10.244.1.10", namespace="ns-" + "n" * 400, app="a" * 1000),
            pod(TWIN_NAME, "10.244.1.11"),
        ]
    )
    names = Attributor(inventory, "node1")
    _, _, ns, app, name = names.end(packed("10.244.1.10"))
    twin = names.end(packed("10.244.1.11"))[4]
    for value in (ns, app, name, twin):
        assert len(value.encode()) == MAX_LABEL_VALUE_BYTES
        assert CUT.search(value)
    assert name.startswith("x" * 244)
    assert name != twin
    assert capped(LONG_NAME) == name  # the same value is cut the same way at every poll
    # Every label built from the owner (a service's in khan_service_transactions_total, /transactions) is capped.
    assert names.owner(packed("10.244.1.10")).name == name


def test_an_owner_reference_name_is_capped_when_it_becomes_the_workload_label() -> None:
    # The API does not bound an ownerReference's name; with --aggregate workload it is the pod's `name` label.
    inventory = build_inventory([pod("web-0", "10.244.1.10", owner="s" * 5000)])
    end = Attributor(inventory, "node1", LabelPolicy(aggregate="workload")).end(packed("10.244.1.10"))
    assert end[4] == capped("s" * 5000)
    assert len(end[4]) == MAX_LABEL_VALUE_BYTES


def test_multibyte_values_are_cut_on_a_character_boundary() -> None:
    value = "é" * 200  # 400 bytes
    cut = capped(value)
    assert len(cut.encode()) <= MAX_LABEL_VALUE_BYTES
    assert cut.startswith("é" * 122)
    assert CUT.search(cut)
    assert capped("é" * 126) == "é" * 126  # 252 bytes: fits
