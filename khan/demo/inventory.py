"""The lab's cluster as Kubernetes objects: the inventory file `khan demo` (and the tests) hand the agent.

Beside the lab's nodes, pods and service: a finished job that held pod-a's address before it, and a hostNetwork
pod on node1's own address.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from khan.demo.topology import (
    CLUSTER_IP,
    HOST_NETWORK_PORT,
    NODES,
    NODES_BY_NAME,
    PODS,
    SERVICE_BACKEND,
    SERVICE_PORT,
    Node,
)


def _metadata(kind: str, name: str, namespace: str | None, labels: dict[str, str], created: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["labels"] = dict(labels)
    metadata["creationTimestamp"] = created
    metadata["resourceVersion"] = "1"
    metadata["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"khan-lab/{kind}/{namespace or ''}/{name}"))
    return metadata


def _pod_object(
    name: str,
    namespace: str,
    labels: dict[str, str],
    created: str,
    node: Node,
    phase: str,
    ips: Sequence[str],
    container_port: int,
    host_network: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "image": "registry.k8s.io/pause:3.9",
                "ports": [{"containerPort": container_port, "protocol": "TCP"}],
            }
        ],
        "nodeName": node.name,
    }
    if host_network:
        spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata("Pod", name, namespace, labels, created),
        "spec": spec,
        "status": {
            "phase": phase,
            "hostIP": node.ipv4,
            "hostIPs": [{"ip": node.ipv4}],
            "podIP": ips[0],
            "podIPs": [{"ip": ip} for ip in ips],
        },
    }


def inventory_objects() -> list[dict[str, Any]]:
    """The lab's nodes, pods and service as `kubectl get nodes,pods,services -A -o yaml` prints them."""
    node1 = NODES[0]
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": _metadata(
                "Node", node.name, None, {"kubernetes.io/hostname": node.name}, "2024-05-01T08:00:00Z"
            ),
            "spec": {"podCIDR": node.pod_cidr4, "podCIDRs": [node.pod_cidr4, node.pod_cidr6]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": node.ipv4}, {"type": "Hostname", "address": node.name}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        for node in NODES
    ]
    objects.append(
        _pod_object(
            "old-job-x7k2p",
            "shop",
            {"app": "old-job"},
            "2024-05-01T09:00:00Z",
            node1,
            "Succeeded",
            [PODS[0].ipv4],
            8080,
        )
    )
    objects.extend(
        _pod_object(
            pod.name,
            pod.namespace,
            pod.labels,
            "2024-05-02T10:00:00Z",
            NODES_BY_NAME[pod.node],
            "Running",
            [pod.ipv4, pod.ipv6],
            5432 if pod.name == "pod-c" else 8080,
        )
        for pod in PODS
    )
    objects.append(
        _pod_object(
            "node-exporter-abcde",
            "monitoring",
            {"app": "node-exporter"},
            "2024-05-01T08:05:00Z",
            node1,
            "Running",
            [node1.ipv4],
            HOST_NETWORK_PORT,
            host_network=True,
        )
    )
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata("Service", "web-svc", "shop", {"app": "web-svc"}, "2024-05-02T10:00:00Z"),
            "spec": {
                "type": "ClusterIP",
                "clusterIP": CLUSTER_IP,
                "clusterIPs": [CLUSTER_IP],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": SERVICE_BACKEND[1], "protocol": "TCP"}],
                "selector": {"app.kubernetes.io/name": "api"},
            },
            "status": {"loadBalancer": {}},
        }
    )
    return objects


def write_inventory(path: str | os.PathLike[str]) -> None:
    """Write the inventory as one `kind: List` YAML document."""
    items = inventory_objects()
    document = {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
    Path(path).write_text(yaml.safe_dump(document, sort_keys=False))
