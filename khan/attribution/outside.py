"""Outside addresses in labels: named ranges (--external-cidrs) and whether their IPs are kept (--external-ips).

An address no Kubernetes object claims is `external`. Its IP alone makes a series per client, which on a
public-facing service is unbounded; a named range (`office=198.51.100.0/24`) says more and costs one series, and
dropping outside IPs altogether folds every outside peer of a pair into one series.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from khan.inventory.objects import EXTERNAL, Owner

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class OutsidePolicy:
    ranges: tuple[tuple[Network, Owner], ...] = ()  # most specific first
    keep_ips: bool = True

    @classmethod
    def parse(cls, cidrs: str, ips: str = "keep") -> OutsidePolicy:
        """`NAME=CIDR,NAME=CIDR,...` and `keep` or `drop`; ValueError saying what is wrong."""
        if ips not in ("keep", "drop"):
            raise ValueError(f"--external-ips must be keep or drop, got {ips!r}")
        ranges: list[tuple[Network, Owner]] = []
        for item in filter(None, (part.strip() for part in cidrs.split(","))):
            name, sep, cidr = item.partition("=")
            name, cidr = name.strip(), cidr.strip()
            if not sep or not name or not cidr:
                raise ValueError(f"--external-cidrs wants NAME=CIDR items, got {item!r}")
            try:
                network = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"--external-cidrs: {cidr!r} (for {name!r}) is not a CIDR") from None
            ranges.append((network, Owner("external", "", "", name)))
        ranges.sort(key=lambda pair: pair[0].prefixlen, reverse=True)  # stable: among equals, first given wins
        return cls(tuple(ranges), ips == "keep")

    def owner(self, packed: bytes) -> Owner:
        """The owner of an address nothing in the cluster claims: its named range, else plain `external`."""
        if self.ranges:
            address = ipaddress.ip_address(packed)
            for network, owner in self.ranges:
                if address.version == network.version and address in network:
                    return owner
        return EXTERNAL
