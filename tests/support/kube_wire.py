"""What the Kubernetes API writes on the wire for the pod tests of the transport and the reflector: pods, list
pages, watch lines and Status objects, as bytes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from khan.inventory.objects import Owner

LIST_RV = "10"


def pod(name: str, ip: str, rv: str, app: str = "web") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": rv, "labels": {"app": app}},
        "spec": {"nodeName": "node1"},
        "status": {"phase": "Running", "podIP": ip},
    }


def owner_of(name: str, app: str = "web") -> Owner:
    return Owner("pod", "shop", app, name)


def event(event_type: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": {"kind": "Pod", "apiVersion": "v1", **obj}}).encode() + b"\n"


def bookmark(rv: str) -> bytes:
    return event("BOOKMARK", {"metadata": {"resourceVersion": rv}})


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def pod_list(items: list[dict[str, Any]], rv: str = LIST_RV, continue_token: str = "") -> bytes:
    metadata: dict[str, str] = {"resourceVersion": rv}
    if continue_token:
        metadata["continue"] = continue_token
    return json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items}).encode()


EXPIRED_STATUS = status(410, "Expired", "too old resource version")
ERROR_EVENT = json.dumps({"type": "ERROR", "object": EXPIRED_STATUS}).encode() + b"\n"
POD_A = pod("pod-a", "10.244.1.5", "5")
POD_B = pod("pod-b", "10.244.1.6", "11")
LIST_A = pod_list([POD_A])
