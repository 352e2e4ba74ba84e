"""The bundle end to end, inside the lab's node1 namespace: two agents (node1's table, and node2's through
--netns), a real Prometheus 2.42 scraping them with alerts/ loaded, a real Alertmanager, and a webhook the test
runs. Every dashboard query executes against that Prometheus and the main panels show the lab's traffic; a
client that never closes its connections makes KhanConnectionLeak reach the webhook, naming client and server,
and stopping it resolves the alert; a flood from a new client makes KhanServerOverloaded reach it.

The rules are a test copy of alerts/khan.rules.yml with every duration divided by 30 (`scaled_rules`): an hour
becomes 2 minutes, a quarter 30 s, `for: 15m` 30 s. Thresholds are unchanged.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import config
from khan.conntrack.namespace import entered
from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.traffic import start_demo_traffic
from tests.support import paths
from tests.support.exposition import KHAN
from tests.support.kube_cluster import stop_process
from tests.support.lab_sockets import connect, holding_server
from tests.unit.test_dashboards import BOARDS, filled, queries

REPO = paths.REPO
SCALE = 30
PROMETHEUS, ALERTMANAGER, WEBHOOK = 9090, 9093, 9095
AGENTS = {"node1": 9986, "node2": 9987}
LEAK_PORT, FLOOD_PORT = 7001, 7002


def scaled_rules(text: str, factor: int = SCALE) -> dict[str, Any]:
    """alerts/khan.rules.yml with every duration (offsets, ranges, `for`) divided by `factor`."""

    def shorter(match: re.Match[str]) -> str:
        seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]
        return f"{max(1, seconds // factor)}s"

    rules = yaml.safe_load(text)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\b(\d+)([smh])\b", shorter, rule["expr"])
            if "for" in rule:
                rule["for"] = re.sub(r"^(\d+)([smh])$", shorter, rule["for"])
    return rules


def test_scaling_divides_every_duration() -> None:
    rules = scaled_rules((REPO / "alerts" / "khan.rules.yml").read_text())
    (leak,) = [
        rule for group in rules["groups"] for rule in group["rules"] if rule.get("alert") == "KhanConnectionLeak"
    ]
    assert re.findall(r"offset (\d+s)", leak["expr"]) == ["120s", "30s", "30s", "60s", "60s", "90s", "90s", "120s"]
    assert leak["for"] == "30s"
    assert not re.search(r"\b\d+[mh]\b", json.dumps(rules))


class Webhook:
    """Alertmanager's webhook receiver: every notification, in arrival order."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", WEBHOOK), Handler)

    def alerts(self, name: str, status: str) -> list[dict[str, Any]]:
        return [
            alert
            for note in self.notifications
            for alert in note["alerts"]
            if alert["labels"]["alertname"] == name and alert["status"] == status
        ]


def start(lab: Lab, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(["ip", "netns", "exec", lab.netns("node1"), *argv], stdout=out, stderr=out)


def wait_for(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            last = check()
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"not within {seconds} s: {what} (last: {last})")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Webhook]]:
    work = tmp_path_factory.mktemp("bundle")
    inventory = work / "inventory.yaml"
    (work / "rules.yml").write_text(yaml.safe_dump(scaled_rules((REPO / "alerts" / "khan.rules.yml").read_text())))
    targets = [f"127.0.0.1:{port}" for port in AGENTS.values()]
    prometheus_config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(work / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ALERTMANAGER}"]}]}]},
        "scrape_configs": [{"job_name": "khan", "static_configs": [{"targets": targets}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
    alertmanager_config = {
        "route": {
            "receiver": "hook",
            "group_by": ["alertname", "src_name", "dst_name"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {"name": "hook", "webhook_configs": [{"url": f"http://127.0.0.1:{WEBHOOK}/", "send_resolved": True}]}
        ],
    }
    (work / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config))
    processes: list[subprocess.Popen[bytes]] = []
    with Lab.create(prefix=private_prefix("khane2e")) as lab:
        start_demo_traffic(lab)
        write_inventory(inventory)
        with lab.inside("node1"):
            webhook = Webhook()
        serving = threading.Thread(target=webhook.server.serve_forever, daemon=True)
        serving.start()
        try:
            for node, port in AGENTS.items():
                argv = [*KHAN, "agent", "--inventory", str(inventory), "--node-name", node, "--interval", "1"]
                argv += ["--listen", f"127.0.0.1:{port}", "--log-format", "json"]
                if node != "node1":
                    argv += ["--netns", lab.netns(node)]
                processes.append(start(lab, argv, work / f"agent-{node}.log"))
            processes.append(
                start(
                    lab,
                    ["prometheus-alertmanager", f"--config.file={work / 'alertmanager.yml'}",
                     f"--storage.path={work / 'am'}", f"--web.listen-address=127.0.0.1:{ALERTMANAGER}",
                     "--cluster.listen-address="],
                    work / "alertmanager.log",
                )
            )  # fmt: skip
            processes.append(
                start(
                    lab,
                    ["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{PROMETHEUS}"],
                    work / "prometheus.log",
                )
            )  # fmt: skip
            wait_for(lambda: len(instant(lab, "up == 1")) == 2, 60, "both agents scraped")
            yield lab, webhook
        finally:
            for process in reversed(processes):
                stop_process(process)
            webhook.server.shutdown()
            webhook.server.server_close()


def instant(lab: Lab, expr: str) -> list[dict[str, Any]]:
    """One instant query against the lab's Prometheus; asserts that it succeeded."""
    path = "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with entered(lab.netns("node1")), urllib.request.urlopen(f"http://127.0.0.1:{PROMETHEUS}{path}", timeout=10) as got:
        answer = json.loads(got.read())
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


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


def test_a_leaking_client_reaches_the_webhook_and_stopping_it_resolves_the_alert(stack: tuple[Lab, Webhook]) -> None:
    lab, webhook = stack
    leaked: list[socket.socket] = []
    with holding_server(lab, "pod-b", "10.244.1.11", LEAK_PORT):
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not webhook.alerts("KhanConnectionLeak", "firing"):
                leaked.append(connect(lab, "pod-a", "10.244.1.11", LEAK_PORT))  # one a second, never closed
                time.sleep(1)
            (alert,) = webhook.alerts("KhanConnectionLeak", "firing")
        finally:
            for client in leaked:
                client.close()
        assert (alert["labels"]["src_name"], alert["labels"]["dst_name"]) == ("pod-a", "pod-b")
        assert alert["annotations"]["summary"].startswith("pod-a keeps opening connections to pod-b")
        (resolved,) = wait_for(lambda: webhook.alerts("KhanConnectionLeak", "resolved"), 120, "leak resolved")
        assert resolved["labels"] == alert["labels"]
