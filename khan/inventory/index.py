"""Address -> owner: every object's claims merged into one immutable index by fixed ownership rules.

A file load builds the index once (`build_inventory`). A watch keeps the latest `Projection` per `ObjectKey` and
builds a new index from them when something changes (`inventory_from_projections`); either way the result
depends only on the set of claims, never on the order they arrived in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from khan.inventory.objects import EXTERNAL, KINDS, Claim, Limit, ObjectKey, Owner, Projection, project

__all__ = ["EXTERNAL", "Inventory", "Limit", "Owner", "build_inventory", "inventory_from_projections", "resolve"]

# Who wins a contested address, highest first. Service and node addresses are declared and stable; a live pod's
# IP is its own; a pod CIDR's gateway and network addresses matter only when nothing more specific claims them.
_RANK: dict[str, int] = {"service": 5, "node": 4, "pod": 3, "gateway": 2, "network": 1}
# A finished pod keeps its IP in status after the IP was handed to another pod, so it loses to everything.
_FINISHED_POD_RANK = 0


class Inventory:
    """Who owns each known address, at one moment. Immutable: a change builds a new inventory."""

    __slots__ = ("_invalid_limits", "_limits", "_objects", "_owners", "_skipped")

    def __init__(
        self,
        owners: Mapping[bytes, Owner] | None = None,
        objects: Mapping[str, int] | None = None,
        skipped: int = 0,
        limits: Iterable[Limit] = (),
        invalid_limits: int = 0,
    ) -> None:
        self._owners: dict[bytes, Owner] = dict(owners or {})  # private and never mutated: a plain dict is fastest
        self._objects: Mapping[str, int] = MappingProxyType(dict.fromkeys(KINDS, 0) | dict(objects or {}))
        self._skipped = skipped
        self._limits = tuple(limits)
        self._invalid_limits = invalid_limits

    def owner(self, address: bytes) -> Owner:
        """A packed address (4 or 16 bytes) -> its owner; EXTERNAL if no object claims it."""
        return self._owners.get(address, EXTERNAL)

    @property
    def objects(self) -> Mapping[str, int]:
        """Objects indexed, by kind; every kind in KINDS is present, 0 if none came."""
        return self._objects

    @property
    def limits(self) -> tuple[Limit, ...]:
        """The valid connection limits of the Services and live Pods that declare one (deleted pods excluded)."""
        return self._limits

    @property
    def invalid_limits(self) -> int:
        """Services and live Pods whose khan.io/max-connections is not a limit."""
        return self._invalid_limits

    @property
    def skipped(self) -> int:
        """Objects ignored: not a Node, Pod or Service, or lacking the fields that name one."""
        return self._skipped

    def __len__(self) -> int:
        return len(self._owners)

    def __repr__(self) -> str:
        return f"Inventory(addresses={len(self)}, objects={dict(self._objects)}, skipped={self._skipped})"


def build_inventory(objects: Iterable[Mapping[str, Any]]) -> Inventory:
    """Raw API objects -> an inventory. Never raises on bad input: what cannot be projected is counted as skipped."""
    projections: list[Projection] = []
    skipped = 0
    for obj in objects:
        projection = project(obj)
        if projection is None:
            skipped += 1
        else:
            projections.append(projection)
    return inventory_from_projections(projections, skipped)


def inventory_from_projections(
    projections: Iterable[Projection], skipped: int = 0, fallback: Iterable[Projection] = ()
) -> Inventory:
    """Projected objects -> an inventory; `skipped` is passed through for the caller's own count.

    `fallback` (deleted pods in their grace period) only names addresses that no object in `projections` claims,
    and is not counted in `objects`; nor do its connection limits count (a deleted pod accepts nothing).
    """
    counts: dict[str, int] = {}
    best: dict[bytes, Projection | Claim] = {}
    limits: dict[ObjectKey, Limit] = {}  # by object: a file listing one object twice declares its limit once
    for projection in projections:
        kind = projection.kind
        counts[kind] = counts.get(kind, 0) + 1
        _claim(best, projection)
        if projection.limit is not None:
            limits[projection.key] = projection.limit
    owners = {address: claim.owner for address, claim in best.items()}
    del best
    lingering: dict[bytes, Projection | Claim] = {}
    for projection in fallback:
        _claim(lingering, projection)
    for address, claim in lingering.items():
        owners.setdefault(address, claim.owner)
    valid = [limit for limit in limits.values() if limit.valid]
    return Inventory(owners, counts, skipped, valid, len(limits) - len(valid))


def resolve(claims: Iterable[Claim]) -> dict[bytes, Owner]:
    """Claims -> the winning owner of each address."""
    best: dict[bytes, Projection | Claim] = {}
    for claim in claims:
        _contend(best, claim.address, claim)
    return {address: claim.owner for address, claim in best.items()}


def _claim(best: dict[bytes, Projection | Claim], projection: Projection) -> None:
    """Each of the projection's claims contends for its address. The projection itself stands for the claims for
    its owner, so that no Claim record is built for them (nor a precedence, unless an address is contested)."""
    packed = projection.packed
    if isinstance(packed, bytes):
        _contend(best, packed, projection)
    else:
        for address in packed:
            _contend(best, address, projection)
    for claim in projection.others:
        _contend(best, claim.address, claim)


def _contend(best: dict[bytes, Projection | Claim], address: bytes, claim: Projection | Claim) -> None:
    held = best.setdefault(address, claim)
    if held is not claim and _precedence(claim) < _precedence(held):
        best[address] = claim


def _precedence(claim: Projection | Claim) -> tuple[int, float, str, str, str, str]:
    """Sort key, lowest wins: highest rank, then newest object, then name order; total, so input order never decides."""
    owner = claim.owner
    rank = _FINISHED_POD_RANK if claim.finished else _RANK.get(owner.type, -1)
    return (-rank, -claim.created, owner.ns, owner.name, owner.type, owner.app)
