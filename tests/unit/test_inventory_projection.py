"""Each kind's addresses and labels, as projected from raw API objects, and bad input that is skipped."""

from __future__ import annotations

import socket
from typing import Any

from khan.inventory.index import EXTERNAL, Owner, build_inventory
from khan.inventory.objects import ObjectKey, project


def packed(address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


DUAL_STACK_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-7d4b9c", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {"containers": [{"name": "web", "image": "nginx"}]},
    "status": {
        "phase": "Running",
        "podIP": "10.244.1.7",
        "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00:10:244:1::7"}],
    },
}

OLD_STYLE_POD: dict[str, Any] = {
    "kind": "Pod",
    "metadata": {"name": "legacy", "namespace": "old"},
    "status": {"phase": "Running", "podIP": "10.244.2.9"},
}

NODE_WITH_HOST_NETWORK_POD: list[dict[str, Any]] = [
    {
        "kind": "Node",
        "metadata": {"name": "worker-1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.10.11"}]},
    },
    {
        "kind": "Pod",
        "metadata": {"name": "kube-proxy-x2k9", "namespace": "kube-system", "labels": {"k8s-app": "kube-proxy"}},
        "spec": {"hostNetwork": True, "nodeName": "worker-1"},
        "status": {"phase": "Running", "podIP": "192.168.10.11", "podIPs": [{"ip": "192.168.10.11"}]},
    },
]

SERVICES: list[dict[str, Any]] = [
    {
        "kind": "Service",
        "metadata": {"name": "api", "namespace": "shop", "labels": {"app.kubernetes.io/name": "api"}},
        "spec": {
            "clusterIP": "10.96.0.20",
            "clusterIPs": ["10.96.0.20", "fd00:96::20"],
            "externalIPs": ["203.0.113.5"],
            "type": "LoadBalancer",
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.7"}, {"hostname": "lb.example.com"}]}},
    },
    {
        "kind": "Service",
        "metadata": {"name": "db-headless", "namespace": "shop"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"]},
    },
    {
        "kind": "Service",
        "metadata": {"name": "old-api", "namespace": "legacy"},
        "spec": {"clusterIP": "10.96.0.30"},
    },
]

NODE: dict[str, Any] = {
    "kind": "Node",
    "metadata": {"name": "worker-2", "labels": {"kubernetes.io/hostname": "worker-2"}},
    "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64"]},
    "status": {
        "addresses": [
            {"type": "InternalIP", "address": "192.168.10.12"},
            {"type": "ExternalIP", "address": "203.0.113.12"},
            {"type": "Hostname", "address": "worker-2"},
            {"type": "InternalIP", "address": "fd00:192:168:10::12"},
        ]
    },
}

OLD_STYLE_NODE: dict[str, Any] = {
    "kind": "Node",
    "metadata": {"name": "worker-3"},
    "spec": {"podCIDR": "10.244.3.0/24"},
}

LABELLED_PODS: list[dict[str, Any]] = [
    {
        "kind": "Pod",
        "metadata": {
            "name": "both",
            "namespace": "a",
            "labels": {"app.kubernetes.io/name": "recommended", "app": "classic"},
        },
        "status": {"podIP": "10.244.5.1"},
    },
    {
        "kind": "Pod",
        "metadata": {"name": "recommended-only", "namespace": "a", "labels": {"app.kubernetes.io/name": "rec"}},
        "status": {"podIP": "10.244.5.2"},
    },
    {
        "kind": "Pod",
        "metadata": {"name": "unlabelled", "namespace": "a", "labels": {"tier": "x"}},
        "status": {"podIP": "10.244.5.3"},
    },
]

SPELLED_LONG_POD: dict[str, Any] = {
    "kind": "Pod",
    "metadata": {"name": "v6", "namespace": "n"},
    "status": {"podIPs": [{"ip": "fd00:0:0:0::0a"}]},
}

# Each of these is skipped: it cannot be named, is the wrong kind or API, or has a section of the wrong type.
MALFORMED: list[Any] = [
    ["not", "an", "object"],
    "a string",
    None,
    42,
    {"kind": "Pod"},
    {"kind": "Pod", "metadata": None, "status": {"podIP": "10.9.0.1"}},
    {"kind": "Pod", "metadata": ["name", "x"], "status": {"podIP": "10.9.0.2"}},
    {"kind": "Pod", "metadata": {"name": 1234, "namespace": "n"}, "status": {"podIP": "10.9.0.3"}},
    {"kind": "Pod", "metadata": {"name": ""}, "status": {"podIP": "10.9.0.4"}},
    {"kind": "Pod", "metadata": {"name": "p", "namespace": ["n"]}, "status": {"podIP": "10.9.0.5"}},
    {"kind": "Pod", "metadata": {"name": "p", "namespace": "n"}, "status": ["10.9.0.6"]},
    {"kind": "Service", "metadata": {"name": "s", "namespace": "n"}, "spec": "10.9.0.7"},
    {"kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "n"}, "data": {"ip": "10.9.0.8"}},
    {"kind": "Deployment", "metadata": {"name": "d", "namespace": "n"}},
    {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "k", "namespace": "n"}},
    {"metadata": {"name": "kindless"}},
]

# Not skipped: recognisable objects whose junk fields are ignored one by one.
ODD_BUT_NAMED: list[dict[str, Any]] = [
    {"kind": "Pod", "metadata": {"name": "no-status", "namespace": "n"}},
    {"kind": "Pod", "metadata": {"name": "null-status", "namespace": "n"}, "spec": None, "status": None},
    {
        "kind": "Pod",
        "metadata": {"name": "junk-ips", "namespace": "n", "labels": ["app", "x"], "creationTimestamp": 7},
        "status": {"podIPs": ["10.9.1.1", {"ip": 167772161}, {"ip": "10.9.1.999"}, {"ip": "10.9.1.2"}]},
    },
    {
        "kind": "Service",
        "metadata": {"name": "junk", "namespace": "n"},
        "spec": {"clusterIPs": "10.9.2.1", "clusterIP": "10.9.2.2", "externalIPs": [None, 5, "bogus"]},
        "status": {"loadBalancer": {"ingress": "10.9.2.3"}},
    },
    {
        "kind": "Node",
        "metadata": {"name": "junk-node"},
        "spec": {"podCIDRs": ["10.9.3.0/33", "nonsense", None]},
        "status": {"addresses": [None, {"type": "InternalIP"}, {"type": "InternalIP", "address": "10.9.3.10"}]},
    },
]


def test_dual_stack_pod_claims_both_families() -> None:
    inventory = build_inventory([DUAL_STACK_POD])
    web = Owner("pod", "shop", "web", "web-7d4b9c")
    assert inventory.owner(packed("10.244.1.7")) == web
    assert inventory.owner(packed("fd00:10:244:1::7")) == web
    assert len(inventory) == 2


def test_pod_without_pod_ips_falls_back_to_pod_ip() -> None:
    inventory = build_inventory([OLD_STYLE_POD])
    assert inventory.owner(packed("10.244.2.9")) == Owner("pod", "old", "", "legacy")


def test_host_network_pod_does_not_claim_its_node_ip() -> None:
    pod_projection = project(NODE_WITH_HOST_NETWORK_POD[1])
    assert pod_projection is not None
    assert pod_projection.key == ObjectKey("Pod", "kube-system", "kube-proxy-x2k9")
    assert pod_projection.claims == ()

    inventory = build_inventory(NODE_WITH_HOST_NETWORK_POD)
    assert inventory.owner(packed("192.168.10.11")) == Owner("node", "", "", "worker-1")
    assert dict(inventory.objects) == {"Node": 1, "Pod": 1, "Service": 0}

    alone = build_inventory(NODE_WITH_HOST_NETWORK_POD[1:])
    assert alone.owner(packed("192.168.10.11")) == EXTERNAL


def test_service_cluster_external_and_load_balancer_ips() -> None:
    inventory = build_inventory(SERVICES)
    api = Owner("service", "shop", "api", "api")
    assert inventory.owner(packed("10.96.0.20")) == api
    assert inventory.owner(packed("fd00:96::20")) == api
    assert inventory.owner(packed("203.0.113.5")) == api
    assert inventory.owner(packed("198.51.100.7")) == api
    assert inventory.owner(packed("10.96.0.30")) == Owner("service", "legacy", "", "old-api")
    # The headless service claims nothing; the hostname-only ingress is not an address.
    assert len(inventory) == 5
    assert inventory.objects["Service"] == 3
    assert inventory.skipped == 0


def test_node_addresses_and_pod_cidr_network_and_gateway() -> None:
    inventory = build_inventory([NODE])
    node = Owner("node", "", "", "worker-2")
    network = Owner("network", "", "", "worker-2")
    gateway = Owner("gateway", "", "", "worker-2")
    assert inventory.owner(packed("192.168.10.12")) == node
    assert inventory.owner(packed("203.0.113.12")) == node
    assert inventory.owner(packed("fd00:192:168:10::12")) == node
    assert inventory.owner(packed("10.244.2.0")) == network
    assert inventory.owner(packed("10.244.2.1")) == gateway
    assert inventory.owner(packed("fd00:10:244:2::")) == network
    assert inventory.owner(packed("fd00:10:244:2::1")) == gateway
    assert inventory.owner(packed("10.244.2.2")) == EXTERNAL
    assert len(inventory) == 7


def test_node_without_pod_cidrs_falls_back_to_pod_cidr() -> None:
    inventory = build_inventory([OLD_STYLE_NODE])
    assert inventory.owner(packed("10.244.3.0")) == Owner("network", "", "", "worker-3")
    assert inventory.owner(packed("10.244.3.1")) == Owner("gateway", "", "", "worker-3")
    assert len(inventory) == 2


def test_app_label_then_recommended_label_then_empty() -> None:
    inventory = build_inventory(LABELLED_PODS)
    assert inventory.owner(packed("10.244.5.1")) == Owner("pod", "a", "classic", "both")
    assert inventory.owner(packed("10.244.5.2")) == Owner("pod", "a", "rec", "recommended-only")
    assert inventory.owner(packed("10.244.5.3")) == Owner("pod", "a", "", "unlabelled")


def test_addresses_are_normalised() -> None:
    inventory = build_inventory([SPELLED_LONG_POD])
    assert inventory.owner(packed("fd00::a")) == Owner("pod", "n", "", "v6")


def test_unknown_address_is_external() -> None:
    inventory = build_inventory([DUAL_STACK_POD, NODE, *SERVICES])
    assert inventory.owner(packed("8.8.8.8")) == EXTERNAL
    assert inventory.owner(packed("2001:db8::1")) == EXTERNAL
    assert inventory.owner(b"") == EXTERNAL
    assert (EXTERNAL.type, EXTERNAL.ns, EXTERNAL.app, EXTERNAL.name) == ("external", "", "", "")


def test_malformed_objects_are_skipped_and_counted() -> None:
    inventory = build_inventory([*MALFORMED, DUAL_STACK_POD])
    assert inventory.skipped == len(MALFORMED)
    assert dict(inventory.objects) == {"Node": 0, "Pod": 1, "Service": 0}
    assert len(inventory) == 2
    for index in range(1, 9):
        assert inventory.owner(packed(f"10.9.0.{index}")) == EXTERNAL


def test_junk_fields_are_ignored_one_by_one() -> None:
    inventory = build_inventory(ODD_BUT_NAMED)
    assert inventory.skipped == 0
    assert dict(inventory.objects) == {"Node": 1, "Pod": 3, "Service": 1}
    assert inventory.owner(packed("10.9.1.2")) == Owner("pod", "n", "", "junk-ips")
    assert inventory.owner(packed("10.9.1.1")) == EXTERNAL
    assert inventory.owner(packed("10.0.0.1")) == EXTERNAL  # 167772161 as an int is not an address string
    # A clusterIPs that is not a list falls back to clusterIP.
    assert inventory.owner(packed("10.9.2.2")) == Owner("service", "n", "", "junk")
    assert inventory.owner(packed("10.9.3.10")) == Owner("node", "", "", "junk-node")
    assert len(inventory) == 3
