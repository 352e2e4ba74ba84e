"""Pure: packed addresses -> label values, for one poll: who owns them, how much of them the labels keep
(--aggregate, --external-cidrs, --external-ips), and from which side this node sees a connection (`seen_from`).

Every address is looked up once per poll, however many entries name it.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field, replace

from khan.attribution.outside import OutsidePolicy
from khan.inventory.index import Inventory
from khan.inventory.objects import Owner
from khan.settings import Aggregate, Settings

# seen_from: this node hosts the original source; or the source is outside the cluster and this node hosts the
# destination or the endpoint that answered (the connection came in here); or the source is on another node and
# this node hosts the destination (that node reports it too, as `source`); or none of these.
SOURCE, INGRESS, DESTINATION, TRANSIT = "source", "ingress", "destination", "transit"
# Every connection in the cluster is on exactly one node as one of these: the count-once selector.
COUNT_ONCE = (SOURCE, INGRESS)

# Types whose owner lives on a node (Owner.node), so that node's table holds their connections.
_HOSTED_TYPES = frozenset({"pod", "node", "network", "gateway"})
_LOOPBACK4 = b"\x7f"
_LOOPBACK6 = bytes(15) + b"\x01"


# The five label values naming one end of a connection, in the order of ConnectionLabels' src_* and dst_* fields:
# type, ip, ns, app, name. A plain tuple: one is made per address and spliced into label sets; a NamedTuple cost
# ~200 ns more per new address, a tenth of attribution's cost when every peer is new.
End = tuple[str, str, str, str, str]


# The longest label value taken from an object, in UTF-8 bytes (what Prometheus's label_value_length_limit counts;
# one longer value fails the node's whole scrape). 253 is the longest name Kubernetes allows (a DNS subdomain), so
# every name, namespace and label value the API accepts passes untouched; a longer one (from a file inventory, or
# an ownerReference's name, whose length the API does not check) is cut and ends in "~" and a hash of the whole,
# so that two cut values stay apart and no valid name ("~" is not allowed in one) can equal a cut value.
MAX_LABEL_VALUE_BYTES = 253
_HASH_BYTES = 4  # 8 hex digits


def address_text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def capped(value: str) -> str:
    """`value` if it fits MAX_LABEL_VALUE_BYTES, else its longest prefix that does with "~" and the hash."""
    if len(value) <= MAX_LABEL_VALUE_BYTES and value.isascii():
        return value
    encoded = value.encode()
    if len(encoded) <= MAX_LABEL_VALUE_BYTES:
        return value
    digest = hashlib.blake2b(encoded, digest_size=_HASH_BYTES).hexdigest()
    keep = MAX_LABEL_VALUE_BYTES - 1 - len(digest)
    return encoded[:keep].decode(errors="ignore") + "~" + digest  # never half a character


def _capped_owner(owner: Owner) -> Owner:
    """The owner with every field that becomes a label value capped; the same object in the common case."""
    values = (owner.ns, owner.app, owner.name, owner.workload_name)
    if all(len(value) <= MAX_LABEL_VALUE_BYTES // 4 for value in values):  # 4 bytes per character at most
        return owner
    ns, app, name, workload_name = map(capped, values)
    if (ns, app, name, workload_name) == values:
        return owner
    return replace(owner, ns=ns, app=app, name=name, workload_name=workload_name)


@dataclass(frozen=True)
class LabelPolicy:
    """How much of an owner the labels keep; from the flags."""

    outside: OutsidePolicy = field(default_factory=OutsidePolicy)
    aggregate: Aggregate = "pod"


DEFAULT_POLICY = LabelPolicy()


def label_policy(settings: Settings) -> LabelPolicy:
    """The label policy of --aggregate, --external-cidrs and --external-ips; ValueError saying what is wrong."""
    outside = OutsidePolicy.parse(settings.external_cidrs, settings.external_ips)
    return LabelPolicy(outside, settings.aggregate)


class Attributor:
    """One poll's address -> labels cache over one inventory. Not thread-safe: one per poll."""

    def __init__(self, inventory: Inventory, node: str, policy: LabelPolicy = DEFAULT_POLICY) -> None:
        self.inventory = inventory
        self.node = node
        self.policy = policy
        self._owners: dict[bytes, Owner] = {}
        self._ends: dict[bytes, End] = {}

    def owner(self, packed: bytes) -> Owner:
        owner = self._owners.get(packed)
        if owner is None:
            owner = self.inventory.owner(packed)
            if owner.type == "external":
                owner = self.policy.outside.owner(packed)
            owner = _capped_owner(owner)
            self._owners[packed] = owner
        return owner

    def end(self, packed: bytes) -> End:
        """The five label values naming one end of a connection."""
        end = self._ends.get(packed)
        if end is None:
            owner = self.owner(packed)
            ip = address_text(packed)
            name = owner.name
            if owner.type == "pod" and self.policy.aggregate == "workload":
                ip, name = "", owner.workload_name or owner.name
            elif owner.type == "external" and not self.policy.outside.keep_ips:
                ip = ""
            end = (owner.type, ip, owner.ns, owner.app, name)
            self._ends[packed] = end
        return end

    def hosted_here(self, packed: bytes) -> bool:
        """Whether this node hosts the address: its pods, its own addresses, its pod network, loopback."""
        owner = self.owner(packed)
        if owner.type in _HOSTED_TYPES:
            return owner.node == self.node
        return packed[:1] == _LOOPBACK4 if len(packed) == 4 else packed == _LOOPBACK6

    def seen_from(self, src: bytes, dst: bytes, endpoint: bytes) -> str:
        if self.hosted_here(src):
            return SOURCE
        here = self.hosted_here(dst) or (endpoint != dst and self.hosted_here(endpoint))
        if not here:
            return TRANSIT
        source = self.owner(src)
        in_cluster = source.type in _HOSTED_TYPES and source.node != ""
        return DESTINATION if in_cluster else INGRESS
