"""The bundle end to end, inside the lab's node1 namespace: two agents (node1's table, and node2's through
--netns), a real Prometheus 2.42 scraping them with alerts/ loaded, a real Alertmanager, and a webhook the test
runs. Every dashboard query executes against that Prometheus and the main panels show the lab's traffic; a
client that never closes its connections makes KhanConnectionLeak reach the webhook, naming client and server,
and stopping it resolves the alert; its connections, silent, make KhanIdleConnectionsPiling reach it first (the
agents run with --idle-after 2) and show on the leak dashboard; a flood from a new client makes
KhanServerOverloaded reach it.

The rules are a test copy of alerts/khan.rules.yml with every duration divided by 30 (`scaled_rules`): an hour
becomes 2 minutes, a quarter 30 s, `for: 15m` 30 s. Thresholds are unchanged.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from alerts import config
from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.traffic import start_demo_traffic
from tests.support import paths
from tests.support.alerting_stack import Webhook, alerting_stack, instant, scaled_rules, start, wait_for
from tests.support.exposition import KHAN
from tests.support.kube_cluster import stop_process
from tests.support.lab_sockets import connect, holding_server
from tests.unit.test_dashboards import BOARDS, filled, queries

REPO = paths.REPO
SCALE = 30
AGENTS = {"node1": 9986, "node2": 9987}
LEAK_PORT, FLOOD_PORT = 7001, 7002
LEAK_PAIR = ("pod-a", "pod-b")
IDLE_AFTER = 2  # seconds: a leaked connection, never used after its handshake, is idle two polls later


def test_scaling_divides_every_duration() -> None:
    rules = scaled_rules((REPO / "alerts" / "khan.rules.yml").read_text(), SCALE)
    (leak,) = [
        rule for group in rules["groups"] for rule in group["rules"] if rule.get("alert") == "KhanConnectionLeak"
    ]
    assert re.findall(r"offset (\d+s)", leak["expr"]) == ["120s", "30s", "30s", "60s", "60s", "90s", "90s", "120s"]
    assert leak["for"] == "30s"
    assert not re.search(r"\b\d+[mh]\b", json.dumps(rules))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Webhook]]:
    work = tmp_path_factory.mktemp("bundle")
    inventory = work / "inventory.yaml"
    rules = scaled_rules((REPO / "alerts" / "khan.rules.yml").read_text(), SCALE)
    targets = [f"127.0.0.1:{port}" for port in AGENTS.values()]
    processes: list[subprocess.Popen[bytes]] = []
    with Lab.create(prefix=private_prefix("khane2e")) as lab:
        start_demo_traffic(lab)
        write_inventory(inventory)
        try:
            for node, port in AGENTS.items():
                argv = [*KHAN, "agent", "--inventory", str(inventory), "--node-name", node, "--interval", "1"]
                argv += ["--listen", f"127.0.0.1:{port}", "--log-format", "json", "--idle-after", str(IDLE_AFTER)]
                if node != "node1":
                    argv += ["--netns", lab.netns(node)]
                processes.append(start(lab, argv, work / f"agent-{node}.log"))
            with alerting_stack(lab, work, rules, targets, group_by=["alertname", "src_name", "dst_name"]) as webhook:
                wait_for(lambda: len(instant(lab, "up == 1")) == 2, 60, "both agents scraped")
                yield lab, webhook
        finally:
            for process in reversed(processes):
                stop_process(process)


def test_every_dashboard_query_executes_and_the_main_panels_show_the_lab(stack: tuple[Lab, Webhook]) -> None:
    lab, _ = stack
    wait_for(lambda: instant(lab, 'khan_connection{node="node2"}'), 30, "node2's series")
    for path in BOARDS:
        for expr in queries(json.loads(path.read_text())):
            instant(lab, filled(expr))  # asserts success
    overview = json.loads((REPO / "dashboards" / "khan-overview.json").read_text())
    by_title = {panel["title"]: panel["targets"][0]["expr"] for panel in overview["panels"]}
    pairs = instant(lab, filled(by_title["Connections by type pair"]))
    assert {(series["metric"]["src_type"], series["metric"]["dst_type"]) for series in pairs} >= {
        ("pod", "pod"), ("pod", "service"), ("external", "pod"), ("node", "pod"),
    }  # fmt: skip
    service_map = json.loads((REPO / "dashboards" / "khan-service-map.json").read_text())
    edges = [t["expr"] for t in service_map["panels"][0]["targets"] if t["refId"] == "edges"]
    assert {series["metric"]["id"] for series in instant(lab, filled(edges[0]))} >= {"shop/pod-a -> shop/web-svc"}
    health = json.loads((REPO / "dashboards" / "khan-health.json").read_text())
    up = [panel["targets"][0]["expr"] for panel in health["panels"] if panel["title"] == "Agents up"]
    assert float(instant(lab, filled(up[0]))[0]["value"][1]) == 2


def test_a_flood_from_a_new_client_reaches_the_webhook_as_server_overloaded(stack: tuple[Lab, Webhook]) -> None:
    lab, webhook = stack
    clients: list[socket.socket] = []
    with holding_server(lab, "pod-a", "10.244.1.10", FLOOD_PORT):
        try:
            for _ in range(250):
                clients.append(connect(lab, "outside", "10.244.1.10", FLOOD_PORT))
            (alert,) = wait_for(lambda: webhook.alerts("KhanServerOverloaded", "firing"), 120, "overload alert")
        finally:
            for client in clients:
                client.close()
    assert alert["labels"]["dst_name"] == "pod-a"
    assert alert["annotations"]["runbook_url"] == f"{config.load().runbook_url}#khanserveroverloaded"


def idle_piling(webhook: Webhook, status: str) -> list[dict[str, Any]]:
    """KhanIdleConnectionsPiling alerts of the leak's pair (the demo's own silent connections may pile up too)."""
    alerts = webhook.alerts("KhanIdleConnectionsPiling", status)
    return [alert for alert in alerts if (alert["labels"]["src_name"], alert["labels"]["dst_name"]) == LEAK_PAIR]


def test_a_leaking_client_reaches_the_webhook_and_stopping_it_resolves_the_alert(stack: tuple[Lab, Webhook]) -> None:
    lab, webhook = stack
    leaked: list[socket.socket] = []
    leak_board = json.loads((REPO / "dashboards" / "khan-leak.json").read_text())
    idle_panel = next(panel for panel in leak_board["panels"] if panel["title"] == "Idle connections by pair")
    with holding_server(lab, "pod-b", "10.244.1.11", LEAK_PORT):
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not webhook.alerts("KhanConnectionLeak", "firing"):
                leaked.append(connect(lab, "pod-a", "10.244.1.11", LEAK_PORT))  # one a second, never closed
                time.sleep(1)
            (alert,) = webhook.alerts("KhanConnectionLeak", "firing")
            # The leaked connections are silent: idle ones pile up, and the alert that says so came first.
            (piling,) = idle_piling(webhook, "firing")
            shown = instant(lab, filled(idle_panel["targets"][0]["expr"]))
            idle_now = {(s["metric"].get("src_name"), s["metric"].get("dst_name")): float(s["value"][1]) for s in shown}
        finally:
            for client in leaked:
                client.close()
        assert (alert["labels"]["src_name"], alert["labels"]["dst_name"]) == LEAK_PAIR
        assert alert["annotations"]["summary"].startswith("pod-a keeps opening connections to pod-b")
        assert piling["startsAt"][:19] < alert["startsAt"][:19]  # to the second: both are RFC 3339, UTC
        assert piling["annotations"]["summary"] == "pod-a holds idle connections to pod-b that pile up"
        assert idle_now[LEAK_PAIR] >= 50
        (resolved,) = wait_for(lambda: webhook.alerts("KhanConnectionLeak", "resolved"), 120, "leak resolved")
        assert resolved["labels"] == alert["labels"]
        (settled,) = wait_for(lambda: idle_piling(webhook, "resolved"), 120, "idle piling resolved")
        assert settled["labels"] == piling["labels"]
