"""The conntrack-table incident end to end, on the real kernel, Prometheus 2.42 and Alertmanager 0.25: one pod of
the Deployment `filler` fills node1's table past the warning share of its limit, and the alert that names the hog
reaches the webhook naming that workload (`khan agent --aggregate workload`), not the light pod beside it; once
the filler's entries are deleted, the alerts resolve.

In the lab's inventory pod-a (10.244.1.10) becomes a pod of the Deployment `filler` (namespace `ingest`; its
ReplicaSet's ownerReference) and pod-b (10.244.1.11) one of the Deployment `light` (namespace `shop`). The filler
sends one UDP datagram from each of many source ports to 8 ports of the outside client 192.0.2.10, routed through
node1: each is one entry in node1's table, and all of them only 8 series. The table's limit is the host's
nf_conntrack_max (a namespace cannot set it), which node1's own count is held against. Unreplied UDP entries live
10 minutes in node1 (`nf_conntrack_udp_timeout`, a sysctl of that lab namespace only), so the table stays full
for as long as the test needs it; they are deleted again however the test ends.

The rules are alerts/khan.rules.yml with every duration divided by 60 (`for: 5m` becomes 5 s); thresholds are
the committed ones.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from khan.demo.inventory import inventory_objects
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.topology import OUTSIDE_IP, PODS
from tests.support import paths
from tests.support.alerting_stack import (
    Webhook,
    alerting_stack,
    instant,
    prometheus_api,
    require_alerting_tools,
    scaled_rules,
    wait_for,
)
from tests.support.kube_agent import AGENT_PORT, RunningAgent
from tests.support.lab_agent import file_agent
from tests.support.netns import run_in
from tests.support.table_fill import FILL_PORTS, fill_udp_flows

SCALE = 60  # `for: 5m` becomes 5 s, an hour's range a minute
FILL_SHARE = 0.85  # of the table's limit: past the warning share (0.75), short of full (0.9)
LIGHT_FLOWS = 2_000
FILLER, LIGHT = PODS[0], PODS[1]  # pod-a and pod-b of the lab, both on node1
ENTRY_TIMEOUT = 600  # seconds an unreplied UDP entry lives in node1's table during the test


def hog_rules() -> dict[str, Any]:
    """alerts/khan.rules.yml with every duration divided by SCALE."""
    return scaled_rules((paths.REPO / "alerts" / "khan.rules.yml").read_text(), SCALE)


def deployment_pod(pod: dict[str, Any], deployment: str, namespace: str, template_hash: str) -> dict[str, Any]:
    """The lab pod renamed as a Deployment's pod, with the ReplicaSet ownerReference a cluster gives it."""
    metadata = pod["metadata"]
    replica_set = f"{deployment}-{template_hash}"
    metadata["name"] = f"{replica_set}-x9z2q"
    metadata["namespace"] = namespace
    metadata["labels"] = {"app": deployment, "pod-template-hash": template_hash}
    metadata["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replica_set, "uid": f"rs-{replica_set}",
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    return pod


def write_workload_inventory(path: Path) -> None:
    """The lab's inventory with pod-a as a pod of Deployment ingest/filler and pod-b one of shop/light."""
    objects = []
    for item in inventory_objects():
        name = item["metadata"]["name"]
        if item["kind"] == "Pod" and name == FILLER.name:
            item = deployment_pod(item, "filler", "ingest", "5d8f7c6b9")
        elif item["kind"] == "Pod" and name == LIGHT.name:
            item = deployment_pod(item, "light", "shop", "7c9d8b5f4")
        elif item["kind"] == "Pod" and item["status"]["podIP"] == FILLER.ipv4:
            continue  # the finished job that held pod-a's address before it: not this test's subject
        objects.append(item)
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}))


def node1_count(lab: Lab) -> int:
    done = run_in(lab, "node1", ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], capture_output=True, text=True)
    return int(done.stdout)


def node1_limit(lab: Lab) -> int:
    done = run_in(lab, "node1", ["cat", "/proc/sys/net/netfilter/nf_conntrack_max"], capture_output=True, text=True)
    return int(done.stdout)


def delete_udp_from(lab: Lab, source: str) -> None:
    """Delete node1's UDP entries from one address (bounded: ~2 s for 220,000 entries)."""
    argv = ["conntrack", "-D", "-p", "udp", "--orig-src", source]
    run_in(lab, "node1", argv, capture_output=True, timeout=60, check=False)


@dataclass
class Incident:
    lab: Lab
    agent: RunningAgent
    webhook: Webhook
    limit: int
    filled: int
    fill_seconds: float
    filled_at: float  # time.monotonic() when the last filler datagram was out


@contextlib.contextmanager
def filled_node(work: Path) -> Iterator[Incident]:
    """The lab, its agent on node1 with --aggregate workload, the alerting stack, and node1's table filled."""
    inventory = work / "inventory.yaml"
    write_workload_inventory(inventory)
    with Lab.create(prefix=private_prefix("khanhog")) as lab:
        run_in(lab, "node1", ["sysctl", "-qw", f"net.netfilter.nf_conntrack_udp_timeout={ENTRY_TIMEOUT}"], check=True)
        extra = ["--aggregate", "workload"]
        try:
            with (
                file_agent(lab.netns("node1"), inventory, "node1", work, interval=1.0, extra=extra) as agent,
                alerting_stack(
                    lab, work, hog_rules(), [f"127.0.0.1:{AGENT_PORT}"], ["alertname", "instance", "src_name"], "1s"
                ) as webhook,
            ):
                wait_for(lambda: instant(lab, 'up{job="khan"} == 1'), 30, "the agent scraped")
                limit = node1_limit(lab)
                fill = int(limit * FILL_SHARE) - node1_count(lab)
                fill_udp_flows(lab.netns(LIGHT.name), LIGHT_FLOWS, (LIGHT.ipv4,), (OUTSIDE_IP,))
                started = time.monotonic()
                fill_udp_flows(lab.netns(FILLER.name), fill, (FILLER.ipv4,), (OUTSIDE_IP,), FILL_PORTS)
                filled_at = time.monotonic()
                yield Incident(lab, agent, webhook, limit, fill, filled_at - started, filled_at)
        finally:
            run_in(lab, "node1", ["conntrack", "-F"], capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def incident(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Incident]:
    require_alerting_tools()
    with filled_node(tmp_path_factory.mktemp("hog")) as found:
        yield found


def test_the_scaled_rules_hold_each_table_alert_once() -> None:
    groups = {group["name"]: group for group in hog_rules()["groups"]}
    names = [rule.get("alert") for group in groups.values() for rule in group["rules"]]
    assert names.count("KhanConntrackTableHog") == 1
    assert names.count("KhanConntrackTableFilling") == 1


def firing_in_prometheus(lab: Lab, name: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = prometheus_api(lab, "/api/v1/alerts")["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"]


def test_the_hog_alert_names_the_filling_workload_and_resolves_once_its_entries_go(incident: Incident) -> None:
    lab, webhook = incident.lab, incident.webhook
    (hog,) = wait_for(lambda: webhook.alerts("KhanConntrackTableHog", "firing"), 90, "KhanConntrackTableHog")
    hog_seen = webhook.first_arrival("KhanConntrackTableHog", "firing")
    assert hog_seen is not None
    wait_for(lambda: webhook.alerts("KhanConntrackTableFilling", "firing"), 30, "KhanConntrackTableFilling")
    labels = hog["labels"]
    assert (labels["node"], labels["instance"]) == ("node1", f"127.0.0.1:{AGENT_PORT}")
    assert (labels["src_type"], labels["src_ns"], labels["src_app"], labels["src_name"]) == (
        "pod", "ingest", "filler", "filler",
    )  # fmt: skip
    # The light pod is on the same node and in the table, but not the hog.
    assert instant(lab, 'khan_connection{src_name="light", src_ns="shop"}')
    named = {a["labels"]["src_name"] for a in webhook.alerts("KhanConntrackTableHog", "firing")}
    assert named == {"filler"}
    # The alert's value is the share of the table's limit the workload holds.
    (in_prometheus,) = firing_in_prometheus(lab, "KhanConntrackTableHog")
    assert float(in_prometheus["value"]) == pytest.approx(incident.filled / incident.limit, abs=0.01)
    measure(incident, hog_seen)

    delete_udp_from(lab, FILLER.ipv4)
    wait_for(lambda: webhook.alerts("KhanConntrackTableHog", "resolved"), 60, "KhanConntrackTableHog resolved")
    wait_for(lambda: webhook.alerts("KhanConntrackTableFilling", "resolved"), 30, "KhanConntrackTableFilling resolved")
    (resolved,) = webhook.alerts("KhanConntrackTableHog", "resolved")
    assert resolved["labels"] == labels


def measure(incident: Incident, hog_seen: float) -> None:
    """The figures of the run, printed for the record (`pytest -s`): how big, how fast, at what cost. Poll time
    and RSS are the last scrape's (the table full) and the most over the last minute (the fill included)."""
    lab = incident.lab

    def now_and_most(metric: str) -> tuple[float, float]:
        (now,) = instant(lab, f'{metric}{{job="khan"}}')
        (most,) = instant(lab, f'max_over_time({metric}{{job="khan"}}[1m])')
        return float(now["value"][1]), float(most["value"][1])

    entries, _ = now_and_most("khan_poll_entries")
    poll, slowest = now_and_most("khan_poll_duration_seconds")
    rss, most_rss = now_and_most("process_resident_memory_bytes")
    _, slowest_scrape = now_and_most("scrape_duration_seconds")
    print(
        f"\nfilled {incident.filled} entries (limit {incident.limit}) in {incident.fill_seconds:.2f} s;"
        f" poll of {entries:.0f} entries {poll:.2f} s (slowest {slowest:.2f} s);"
        f" agent RSS {rss / 2**20:.0f} MiB (most {most_rss / 2**20:.0f} MiB);"
        f" slowest scrape {slowest_scrape:.2f} s;"
        f" the webhook saw KhanConntrackTableHog {hog_seen - incident.filled_at:.1f} s after the fill"
    )
