"""A bare conntrack table to fill with UDP flows: the table-size tests and `make bench`."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator, Sequence

from khan.conntrack.namespace import entered
from khan.demo.namespaces import NETNS_DIR, LabError, delete_netns, run_setup

FILL_SOURCES = tuple(f"10.76.0.{i}" for i in range(1, 5))  # clients, all local to the namespace
FILL_DESTINATIONS = tuple(f"10.77.0.{i}" for i in range(1, 33))
FILL_PORTS = (53, 80, 443, 5432, 6379, 8080, 9000, 11211)


@contextlib.contextmanager
def table_namespace(name: str) -> Iterator[str]:
    """A namespace whose table records flows (a `ct state new` rule) with 10.76/16 and 10.77/16 local; removed
    on exit. Unreplied UDP flows live an hour there (a sysctl of this namespace only) so a full table stays full."""
    if (NETNS_DIR / name).exists():
        raise LabError(f"network namespace {name} already exists")
    run_setup(["ip", "netns", "add", name])
    try:
        script = "\n".join(
            (
                "link set lo up",
                "route add local 10.76.0.0/16 dev lo",
                "route add local 10.77.0.0/16 dev lo",
            )
        )
        run_setup(["ip", "-n", name, "-batch", "-"], stdin=script + "\n")
        run_setup(["ip", "netns", "exec", name, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=3600"])
        ruleset = (
            "table inet khanfill {\n chain out {\n  type filter hook output priority 0;\n  ct state new counter\n }\n}"
        )
        run_setup(["ip", "netns", "exec", name, "nft", "-f", "-"], stdin=ruleset + "\n")
        yield name
    finally:
        delete_netns([name])


def fill_udp_flows(
    netns: str,
    count: int,
    sources: Sequence[str] = FILL_SOURCES,
    destinations: Sequence[str] = FILL_DESTINATIONS,
    ports: Sequence[int] = FILL_PORTS,
) -> None:
    """`count` distinct UDP flows: client socket k (source port 20000 + k, address sources[k % len]) sends one
    datagram to every destination and port in turn, until `count` datagrams are out."""
    targets = [(d, p) for d in destinations for p in ports]
    sent, port = 0, 20000
    with entered(netns):
        while sent < count:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((sources[port % len(sources)], port))
                for target in targets[: count - sent]:
                    sock.sendto(b"k", target)
                    sent += 1
            port += 1
