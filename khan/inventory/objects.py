"""Pure projections: one raw Node, Pod or Service dict -> the address claims it makes.

The input is one item of `kubectl get nodes,pods,services -A -o yaml`, which has the same shape as the object of
a kubernetes_asyncio raw watch event, so a file load and a watch share these functions one object at a time.
Input is untrusted: a field of the wrong type is ignored, an invalid address is dropped, and an object that
cannot be named is not projected at all (`project` returns None). Nothing here raises on bad input; the one side
effect is the rate-limited warning about a bad connection-limit annotation (`khan.inventory.limits`).

Which claim wins a contested address is not decided here but in `khan.inventory.index`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from khan.inventory.limits import INVALID, declared_limit

# The kinds khan projects; everything else in an inventory is skipped.
NODE = "Node"
POD = "Pod"
SERVICE = "Service"
KINDS: tuple[str, ...] = (NODE, POD, SERVICE)

# The pod phases whose status may still show an IP that was since given to another pod.
_FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
# Hostname and the DNS types are names, not addresses.
_NODE_ADDRESS_TYPES = frozenset({"InternalIP", "ExternalIP"})


# The records.


@dataclass(frozen=True, slots=True)
class Owner:
    """What an address belongs to. The first four fields are the label values of every series that names it and
    alone make up equality and hash; the rest describe a pod further (empty for other types)."""

    type: str  # "pod" | "service" | "node" | "network" | "gateway" | "external"
    ns: str
    app: str
    name: str
    node: str = field(default="", compare=False)  # the node a pod is scheduled on
    phase: str = field(default="", compare=False)  # the pod's phase: Pending, Running, Succeeded, Failed
    # What runs the pod: Deployment, StatefulSet, DaemonSet, Job, CronJob, another controller's kind, or Pod
    # for a bare pod; and that object's name.
    workload_kind: str = field(default="", compare=False)
    workload_name: str = field(default="", compare=False)


EXTERNAL = Owner("external", "", "", "")


class ObjectKey(NamedTuple):
    """Names one API object across watch events, so that its claims can be replaced or dropped together."""

    kind: str  # one of KINDS
    ns: str  # "" for nodes
    name: str


class Claim(NamedTuple):
    """One object's claim on one address."""

    address: bytes  # packed, as socket.inet_pton gives it
    owner: Owner
    finished: bool  # a Succeeded or Failed pod, whose IP may belong to someone else by now
    created: float  # the object's creationTimestamp in Unix seconds; 0.0 if absent or unreadable


class Limit(NamedTuple):
    """The connection limit a Service or a live Pod declares (khan.io/max-connections), and whose it is."""

    owner: Owner
    value: int  # INVALID when the annotation's value is not a limit

    @property
    def valid(self) -> bool:
        return self.value != INVALID


class Projection(NamedTuple):
    """Everything one object says about addresses, in the compact form the watch cache keeps one of per object (50,000
    pods: a few records fewer per pod is megabytes): the object's owner, which also names it (`key`); the addresses it
    claims for that owner, as one packed address or a tuple of them (none for a pod without an IP); its creation time;
    and the claims it makes for other owners (a node's pod CIDR network and gateway). `limit` is None for an object
    declaring none (nearly all): one empty slot, the annotations themselves are never kept."""

    owner: Owner
    packed: bytes | tuple[bytes, ...]
    created: float  # the object's creationTimestamp in Unix seconds; 0.0 if absent or unreadable
    limit: Limit | None = None
    others: tuple[Claim, ...] = ()

    @property
    def key(self) -> ObjectKey:
        owner = self.owner
        return ObjectKey(_KIND_OF_TYPE[owner.type], owner.ns, owner.name)

    @property
    def kind(self) -> str:
        return _KIND_OF_TYPE[self.owner.type]

    @property
    def finished(self) -> bool:
        """A Succeeded or Failed pod (other objects have no phase)."""
        return self.owner.phase in _FINISHED_PHASES

    @property
    def addresses(self) -> tuple[bytes, ...]:
        """The addresses claimed for `owner`."""
        packed = self.packed
        return (packed,) if isinstance(packed, bytes) else packed

    @property
    def claims(self) -> tuple[Claim, ...]:
        """Every claim, those for `owner` first; built on demand, never kept."""
        finished = self.finished
        return tuple(Claim(address, self.owner, finished, self.created) for address in self.addresses) + self.others


# A projection's kind, from its owner's type.
_KIND_OF_TYPE: dict[str, str] = {"pod": POD, "service": SERVICE, "node": NODE}


class _Meta(NamedTuple):
    ns: str
    name: str
    app: str
    created: float
    labels: Mapping[str, Any]
    owner_references: object
    annotations: object  # read for the connection limit only, never kept


def project(obj: Mapping[str, Any], default_kind: str | None = None) -> Projection | None:
    """A raw object -> its projection; None if it is not a nameable core v1 Node, Pod or Service.

    `default_kind` is for items that do not name their own kind, as in a PodList straight from the API.
    """
    if not isinstance(obj, Mapping):
        return None
    kind = obj.get("kind", default_kind)
    # A CRD may reuse a core name (Knative's Service); only core v1 objects have these fields.
    if obj.get("apiVersion", "v1") != "v1":
        return None
    if kind == POD:
        return project_pod(obj)
    if kind == SERVICE:
        return project_service(obj)
    if kind == NODE:
        return project_node(obj)
    return None


def project_pod(pod: Mapping[str, Any]) -> Projection | None:
    """Every pod IP (both families); nothing for a hostNetwork pod, whose addresses are its node's."""
    parts = _parts(pod, namespaced=True)
    if parts is None:
        return None
    meta, spec, status = parts
    if spec.get("hostNetwork") is True:  # its connections are its node's: no pod series for a limit to join
        return Projection(Owner("pod", meta.ns, meta.app, meta.name), (), meta.created)
    pod_ips = status.get("podIPs")
    values: list[object]
    if isinstance(pod_ips, list) and pod_ips:
        values = [entry.get("ip") for entry in pod_ips if isinstance(entry, Mapping)]
    else:  # podIPs arrived with dual-stack (1.16); podIP alone is the older form of the same thing
        values = [status.get("podIP")]
    phase = _text(status.get("phase"))
    workload_kind, workload_name = workload_of(meta)
    owner = Owner("pod", meta.ns, meta.app, meta.name, _text(spec.get("nodeName")), phase, workload_kind, workload_name)
    finished = phase in _FINISHED_PHASES
    # A finished pod accepts nothing: its limit counts for nobody, and a bad one is not worth a warning.
    limit = None if finished else _limit(meta, POD, owner)
    return Projection(owner, _packed(values), meta.created, limit)


def project_service(service: Mapping[str, Any]) -> Projection | None:
    """Cluster IPs (not "None"), external IPs and load-balancer ingress IPs."""
    parts = _parts(service, namespaced=True)
    if parts is None:
        return None
    meta, spec, status = parts
    cluster_ips = spec.get("clusterIPs")
    values: list[object] = []
    if isinstance(cluster_ips, list) and cluster_ips:
        values.extend(cluster_ips)
    else:
        values.append(spec.get("clusterIP"))
    external_ips = spec.get("externalIPs")
    if isinstance(external_ips, list):
        values.extend(external_ips)
    load_balancer = status.get("loadBalancer")
    if isinstance(load_balancer, Mapping):
        ingress = load_balancer.get("ingress")
        if isinstance(ingress, list):
            values.extend(entry.get("ip") for entry in ingress if isinstance(entry, Mapping))
    # "None" and "" fail to parse and so drop out with every other invalid address.
    owner = Owner("service", meta.ns, meta.app, meta.name)
    return Projection(owner, _packed(values), meta.created, _limit(meta, SERVICE, owner))


def project_node(node: Mapping[str, Any]) -> Projection | None:
    """Internal and external addresses, plus each pod CIDR's network address and first host (its gateway)."""
    parts = _parts(node, namespaced=False)
    if parts is None:
        return None
    meta, spec, status = parts
    addresses = status.get("addresses")
    values: list[object] = []
    if isinstance(addresses, list):
        values.extend(
            entry.get("address")
            for entry in addresses
            if isinstance(entry, Mapping) and entry.get("type") in _NODE_ADDRESS_TYPES
        )
    claims: list[Claim] = []

    pod_cidrs = spec.get("podCIDRs")
    cidrs: list[object] = list(pod_cidrs) if isinstance(pod_cidrs, list) and pod_cidrs else [spec.get("podCIDR")]
    network_owner = Owner("network", "", "", meta.name, meta.name)
    gateway_owner = Owner("gateway", "", "", meta.name, meta.name)
    for cidr in cidrs:
        network = _network(cidr)
        if network is None:
            continue
        claims.append(Claim(network.network_address.packed, network_owner, False, meta.created))
        if network.num_addresses > 1:  # a /32 or /128 has no host beyond its network address
            claims.append(Claim((network.network_address + 1).packed, gateway_owner, False, meta.created))
    owner = Owner("node", "", meta.app, meta.name, meta.name)
    return Projection(owner, _packed(values), meta.created, others=tuple(dict.fromkeys(claims)))


def _parts(obj: Mapping[str, Any], *, namespaced: bool) -> tuple[_Meta, Mapping[str, Any], Mapping[str, Any]] | None:
    """metadata, spec and status of a raw object; None when it cannot be named or a part has the wrong type."""
    meta = _read_meta(obj.get("metadata"), namespaced=namespaced)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if meta is None or not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        return None
    return meta, spec, status


def _read_meta(meta: object, *, namespaced: bool) -> _Meta | None:
    """metadata -> what khan keeps of it; None if the object has no usable name."""
    if not isinstance(meta, Mapping):
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    ns = (meta.get("namespace") or "") if namespaced else ""
    if not isinstance(ns, str):
        return None
    labels = meta.get("labels")
    if not isinstance(labels, Mapping):
        labels = {}
    return _Meta(
        _intern(ns),
        name,
        _app(labels),
        _created(meta.get("creationTimestamp")),
        labels,
        meta.get("ownerReferences"),
        meta.get("annotations"),
    )


def _limit(meta: _Meta, kind: str, owner: Owner) -> Limit | None:
    value = declared_limit(meta.annotations, kind, meta.ns, meta.name)
    return None if value is None else Limit(owner, value)


def _app(labels: Mapping[str, Any]) -> str:
    """The `app` label, else `app.kubernetes.io/name` (the recommended label), else ""."""
    for label in ("app", "app.kubernetes.io/name"):
        value = labels.get(label)
        if isinstance(value, str) and value:
            return _intern(value)
    return ""


# A Job that a CronJob made is named after it plus the scheduled time in Unix minutes (8 digits until 2160).
_CRONJOB_JOB_NAME = re.compile(r"^(?P<cronjob>.+)-\d{8,}$")


def workload_of(meta: _Meta) -> tuple[str, str]:
    """(kind, name) of what runs a pod, from its controller's ownerReference; ("Pod", its name) for a bare pod.

    Only the pod is read (no watch of ReplicaSets or Jobs): a Deployment's ReplicaSet is named after the
    Deployment plus the pod's `pod-template-hash` label, and a CronJob's Job after the CronJob plus a time.
    """
    references = meta.owner_references
    candidates = [ref for ref in references if isinstance(ref, Mapping)] if isinstance(references, list) else []
    controllers = [ref for ref in candidates if ref.get("controller") is True]
    chosen: Mapping[str, Any] = (controllers or candidates or [{}])[0]
    kind, name = _text(chosen.get("kind")), _text(chosen.get("name"))
    if not kind or not name:
        return "Pod", meta.name
    if kind == "ReplicaSet":
        template_hash = meta.labels.get("pod-template-hash")
        if isinstance(template_hash, str) and template_hash and name.endswith("-" + template_hash):
            return "Deployment", _intern(name[: -len(template_hash) - 1])
    elif kind == "Job":
        match = _CRONJOB_JOB_NAME.match(name)
        if match:
            return "CronJob", _intern(match["cronjob"])
    return _intern(kind), _intern(name)


def _text(value: object) -> str:
    return _intern(value) if isinstance(value, str) else ""


def _intern(value: str) -> str:
    """One copy of a string many records share (namespaces, apps, nodes, workloads): 50,000 pods, a few MB."""
    return sys.intern(value)


def _created(value: object) -> float:
    if isinstance(value, str):
        return _created_text(value)
    if not isinstance(value, datetime):
        return 0.0
    if value.tzinfo is None:  # the API always writes UTC ("Z"); a naive value lost its zone on the way
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@functools.lru_cache(maxsize=64)
def _created_text(value: str) -> float:
    """One float for the pods created in the same second: a Deployment's replicas, listed next to each other,
    share one object instead of holding 24 bytes each."""
    try:
        return _created(datetime.fromisoformat(value))
    except ValueError:
        return 0.0


def _address(value: object) -> bytes | None:
    """An address string -> packed bytes; one spelling per address ("fd00::0a" is "fd00::a")."""
    if not isinstance(value, str):  # ip_address() would also take an int, which no API field holds
        return None
    try:
        return ipaddress.ip_address(value).packed
    except ValueError:
        return None


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


def _packed(values: Iterable[object]) -> bytes | tuple[bytes, ...]:
    """Address strings -> each distinct valid address packed, in input order: alone if it is the only one (most
    objects have one: a tuple around it would cost 48 bytes)."""
    addresses = tuple(dict.fromkeys(address for address in map(_address, values) if address is not None))
    return addresses[0] if len(addresses) == 1 else addresses
