"""--external-cidrs and --external-ips: outside addresses named after their range, IPs kept or dropped, and the
cluster's own addresses never renamed."""

from __future__ import annotations

import socket

import pytest

from khan.attribution.connections import attribute, count_flows
from khan.attribution.labels import LabelPolicy
from khan.attribution.outside import OutsidePolicy
from khan.inventory.objects import EXTERNAL, Owner
from tests.support.exposition import khan
from tests.unit.test_snapshot_labels import ESTABLISHED, INVENTORY, POD, flow


def packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def named(name: str) -> Owner:
    return Owner("external", "", "", name)


def test_an_empty_policy_changes_nothing() -> None:
    policy = OutsidePolicy.parse("")
    assert policy.keep_ips
    assert policy.owner(packed("192.0.2.7")) == EXTERNAL


def test_the_most_specific_range_wins_whatever_the_order() -> None:
    policy = OutsidePolicy.parse("internet=0.0.0.0/0, office=198.51.100.0/24 ,vpn=198.51.100.128/25")
    assert policy.owner(packed("198.51.100.200")) == named("vpn")
    assert policy.owner(packed("198.51.100.7")) == named("office")
    assert policy.owner(packed("8.8.8.8")) == named("internet")


def test_ranges_match_their_own_family_only() -> None:
    policy = OutsidePolicy.parse("v4=0.0.0.0/0,partner=2001:db8::/32")
    assert policy.owner(packed("2001:db8::5")) == named("partner")
    assert policy.owner(packed("2001:db9::5")) == EXTERNAL
    assert policy.owner(packed("203.0.113.1")) == named("v4")


def test_one_name_may_cover_several_ranges() -> None:
    policy = OutsidePolicy.parse("corp=10.0.0.0/8,corp=fd00::/8")
    assert policy.owner(packed("10.1.2.3")) == policy.owner(packed("fd00::1")) == named("corp")


@pytest.mark.parametrize(
    ("cidrs", "ips", "message"),
    [
        ("office", "keep", "--external-cidrs wants NAME=CIDR items, got 'office'"),
        ("=10.0.0.0/8", "keep", "--external-cidrs wants NAME=CIDR items, got '=10.0.0.0/8'"),
        ("office=", "keep", "--external-cidrs wants NAME=CIDR items, got 'office='"),
        ("office=10.0.0.300/8", "keep", "--external-cidrs: '10.0.0.300/8' (for 'office') is not a CIDR"),
        ("", "hide", "--external-ips must be keep or drop, got 'hide'"),
    ],
)
def test_bad_values_say_what_is_wrong(cidrs: str, ips: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        OutsidePolicy.parse(cidrs, ips)


def test_cluster_addresses_are_never_renamed_by_a_range() -> None:
    # A range that covers the pod network: the pod keeps its own name, only the outside client is renamed.
    policy = OutsidePolicy.parse("everything=0.0.0.0/0")
    client = packed("192.0.2.7")
    (labels,) = attribute(
        count_flows([[flow(6, client, POD, 40000, 8080, 0, ESTABLISHED)]]), INVENTORY, "n", LabelPolicy(policy)
    )
    assert labels[1:6] == ("external", "192.0.2.7", "", "", "everything")
    assert labels[6:11] == ("pod", "10.244.1.10", "shop", "web", "web-1")


def test_dropping_outside_ips_folds_every_outside_client_into_one_series() -> None:
    clients = [packed(f"192.0.2.{host}") for host in range(1, 51)] + [packed("198.51.100.9")]
    flows = [flow(6, client, POD, 40000, 8080, 0, ESTABLISHED) for client in clients]
    policy = OutsidePolicy.parse("office=198.51.100.0/24", "drop")
    series = attribute(count_flows([flows]), INVENTORY, "n", LabelPolicy(policy))
    unnamed = ("n", "external", "", "", "", "", "pod", "10.244.1.10", "shop", "web", "web-1", "8080", "tcp")
    office = ("n", "external", "", "", "", "office", *unnamed[6:])
    assert series == {(*unnamed, "ESTABLISHED", "transit"): 50, (*office, "ESTABLISHED", "transit"): 1}
    assert sum(series.values()) == len(clients)


def test_a_bad_flag_is_a_usage_error() -> None:
    done = khan(["snapshot", "--external-cidrs", "office=not-a-cidr"])
    assert done.returncode == 2
    assert done.stderr.strip() == "khan: --external-cidrs: 'not-a-cidr' (for 'office') is not a CIDR"
