"""`--inventory PATH`: the file formats accepted, and the one-line errors for files that cannot be used."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from khan.inventory.from_file import InventoryError, load_inventory
from khan.inventory.index import EXTERNAL, Owner
from tests.support import paths

FIXTURES = paths.FIXTURES / "inventory"

INVALID_YAML = """\
apiVersion: v1
kind: List
items:
- kind: Pod
  metadata: {name: broken
    namespace: shop
"""

SCALAR_DOCUMENT = "just some text\n"

ITEMS_NOT_A_LIST = "kind: List\nitems: {kind: Pod}\n"


def packed(address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


def test_kubectl_list_yaml() -> None:
    inventory = load_inventory(FIXTURES / "cluster-list.yaml")
    assert dict(inventory.objects) == {"Node": 1, "Pod": 2, "Service": 1}
    assert inventory.skipped == 0
    checkout_pod = Owner("pod", "shop", "checkout", "checkout-5d8f7c9b4-q2w7x")
    assert inventory.owner(packed("10.244.1.12")) == checkout_pod
    assert inventory.owner(packed("fd00:10:244:1::c")) == checkout_pod
    assert inventory.owner(packed("10.96.14.2")) == Owner("service", "shop", "checkout", "checkout")
    # kube-proxy runs with hostNetwork: the node keeps its address.
    assert inventory.owner(packed("172.18.0.3")) == Owner("node", "", "", "kind-worker")
    assert inventory.owner(packed("fc00:f853:ccd:e793::3")) == Owner("node", "", "", "kind-worker")
    assert inventory.owner(packed("10.244.1.0")) == Owner("network", "", "", "kind-worker")
    assert inventory.owner(packed("fd00:10:244:1::1")) == Owner("gateway", "", "", "kind-worker")
    assert len(inventory) == 9


def test_multi_document_yaml() -> None:
    inventory = load_inventory(FIXTURES / "multi-document.yaml")
    # PodList items carry no kind of their own; they are Pods because the list says so.
    assert dict(inventory.objects) == {"Node": 1, "Pod": 2, "Service": 0}
    assert inventory.skipped == 1  # the ConfigMap
    assert inventory.owner(packed("192.168.1.10")) == Owner("node", "", "", "node-a")
    assert inventory.owner(packed("10.244.0.5")) == Owner("pod", "cache", "redis", "redis-0")
    assert inventory.owner(packed("10.244.0.99")) == EXTERNAL
    assert len(inventory) == 2


def test_json_list() -> None:
    inventory = load_inventory(str(FIXTURES / "cluster-list.json"))
    assert dict(inventory.objects) == {"Node": 0, "Pod": 1, "Service": 1}
    controller = Owner("service", "ingress-nginx", "ingress-nginx", "ingress-nginx-controller")
    for address in ("10.96.200.10", "fd00:10:96::c8a", "203.0.113.80", "198.51.100.80"):
        assert inventory.owner(packed(address)) == controller
    assert inventory.owner(packed("10.244.1.40")) == Owner(
        "pod", "ingress-nginx", "ingress-nginx", "ingress-nginx-controller-6b9c7d5f8-zx4kp"
    )
    assert len(inventory) == 5


def test_empty_file_is_an_empty_inventory(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    inventory = load_inventory(path)
    assert len(inventory) == 0
    assert dict(inventory.objects) == {"Node": 0, "Pod": 0, "Service": 0}
    assert inventory.skipped == 0
    path.write_text("---\n# nothing yet\n---\n")
    assert len(load_inventory(path)) == 0


def test_missing_file_names_path_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(caught.value) == f"inventory file {path}: cannot read it: No such file or directory"


def test_invalid_yaml_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(INVALID_YAML)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert message.startswith(f"inventory file {path}: invalid YAML at line 6, column ")
    assert "\n" not in message


def test_top_level_that_is_not_an_object_or_list(tmp_path: Path) -> None:
    path = tmp_path / "scalar.yaml"
    path.write_text(SCALAR_DOCUMENT)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(caught.value) == f"inventory file {path}: document 1 is a str, expected a Kubernetes object or List"

    path.write_text(ITEMS_NOT_A_LIST)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(caught.value) == f"inventory file {path}: document 1 has 'items' of type dict, not a list"


# Values the parser turns into something other than a string: never the end of the agent.

ANNOTATED_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  creationTimestamp: 2024-05-01T08:00:00Z
  annotations:
    backup/last-run: 2024-02-30
status:
  podIP: 10.244.1.10
"""


def test_unquoted_dates_stay_strings_even_invalid_ones(tmp_path: Path) -> None:
    # YAML would read both as timestamps; the second is no date at all and used to fail the whole file.
    path = tmp_path / "annotated.yaml"
    path.write_text(ANNOTATED_POD)
    inventory = load_inventory(path)
    assert inventory.owner(packed("10.244.1.10")) == Owner("pod", "shop", "", "web-1")


def test_a_value_the_parser_cannot_build_is_an_inventory_error(tmp_path: Path) -> None:
    # Python refuses to convert integers of more than 4,300 digits: a ValueError from inside the YAML parser.
    path = tmp_path / "huge-number.yaml"
    path.write_text(ANNOTATED_POD + "spec:\n  priority: " + "9" * 5000 + "\n")
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    message = str(caught.value)
    assert message.startswith(f"inventory file {path}: cannot load it: ValueError: Exceeds the limit (4300 digits)")
    assert "\n" not in message
    assert len(message) < 400 + len(str(path))
