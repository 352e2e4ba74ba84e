"""A real Prometheus 2.42 and Alertmanager 0.25 inside the lab's node1 namespace, and the webhook the test runs
as Alertmanager's receiver: the alert path of tests/e2e/test_bundle_e2e.py and test_table_hog_e2e.py.

Prometheus's job is named `khan` (the rules select on it); the rules are a test copy with every duration divided
by a factor (`scaled_rules`), so that an hour's rule is seen firing within a test's minutes.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from khan.conntrack.namespace import entered
from khan.demo.lab import Lab
from tests.support import tools
from tests.support.kube_cluster import stop_process

PROMETHEUS, ALERTMANAGER, WEBHOOK = 9090, 9093, 9095  # on node1's loopback: every lab has its own
JOB = "khan"
ALERTING_TOOLS = {"prometheus": "prometheus", "prometheus-alertmanager": "prometheus-alertmanager"}


def require_alerting_tools() -> None:
    """Prometheus and Alertmanager, as `make test` installs them; the tools policy says what a missing one does."""
    for name, package in ALERTING_TOOLS.items():
        tools.require_tool(name, package)


def scaled_rules(text: str, factor: int) -> dict[str, Any]:
    """Prometheus rules (YAML text) with every duration (offsets, ranges, `for`) divided by `factor`."""

    def shorter(match: re.Match[str]) -> str:
        seconds = int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]
        return f"{max(1, seconds // factor)}s"

    rules: dict[str, Any] = yaml.safe_load(text)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = re.sub(r"\b(\d+)([smh])\b", shorter, rule["expr"])
            if "for" in rule:
                rule["for"] = re.sub(r"^(\d+)([smh])$", shorter, rule["for"])
    return rules


class Webhook:
    """Alertmanager's webhook receiver: every notification, in arrival order, with when it arrived."""

    def __init__(self, port: int = WEBHOOK) -> None:
        self.notifications: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each notification
        received, arrivals = self.notifications, self.arrivals

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                arrivals.append(time.monotonic())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)

    def alerts(self, name: str, status: str) -> list[dict[str, Any]]:
        return [
            alert
            for note in self.notifications
            for alert in note["alerts"]
            if alert["labels"]["alertname"] == name and alert["status"] == status
        ]

    def first_arrival(self, name: str, status: str) -> float | None:
        """time.monotonic() of the first notification holding an alert `name` in `status`; None if none yet."""
        for note, arrived in zip(self.notifications, self.arrivals, strict=True):
            if any(a["labels"]["alertname"] == name and a["status"] == status for a in note["alerts"]):
                return arrived
        return None


def start(lab: Lab, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A process inside the lab's node1 namespace, its output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(["ip", "netns", "exec", lab.netns("node1"), *argv], stdout=out, stderr=out)


def wait_for(check: Callable[[], Any], seconds: float, what: str, every: float = 0.5) -> Any:
    """check()'s first truthy answer within `seconds` (OSError, ValueError, KeyError count as not yet)."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            last = check()
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"not within {seconds} s: {what} (last: {last})")


@contextlib.contextmanager
def alerting_stack(
    lab: Lab,
    work: Path,
    rules: dict[str, Any],
    targets: Sequence[str],
    group_by: Sequence[str],
    interval: str = "2s",
) -> Iterator[Webhook]:
    """Alertmanager (one route to the webhook, 1 s group waits) and Prometheus (job `khan` scraping `targets`
    every `interval`, evaluating `rules` as often), in node1's namespace; all stopped when the block ends."""
    (work / "rules.yml").write_text(yaml.safe_dump(rules))
    prometheus_config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(work / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{ALERTMANAGER}"]}]}]},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": list(targets)}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
    alertmanager_config = {
        "route": {
            "receiver": "hook",
            "group_by": list(group_by),
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {"name": "hook", "webhook_configs": [{"url": f"http://127.0.0.1:{WEBHOOK}/", "send_resolved": True}]}
        ],
    }
    (work / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config))
    with lab.inside("node1"):
        webhook = Webhook()
    serving = threading.Thread(target=webhook.server.serve_forever, daemon=True)
    serving.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
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
        yield webhook
    finally:
        for process in reversed(processes):
            stop_process(process)
        webhook.server.shutdown()
        webhook.server.server_close()


def prometheus_api(lab: Lab, path: str, **params: str) -> Any:
    """The `data` of one successful answer of the lab's Prometheus HTTP API (path like "/api/v1/query")."""
    query = "?" + urllib.parse.urlencode(params) if params else ""
    url = f"http://127.0.0.1:{PROMETHEUS}{path}{query}"
    with entered(lab.netns("node1")), urllib.request.urlopen(url, timeout=10) as got:
        answer = json.loads(got.read())
    assert answer["status"] == "success", answer
    return answer["data"]


def instant(lab: Lab, expr: str) -> list[dict[str, Any]]:
    """One instant query against the lab's Prometheus; asserts that it succeeded."""
    result: list[dict[str, Any]] = prometheus_api(lab, "/api/v1/query", query=expr)["result"]
    return result
