"""alerts/: promtool accepts the rules and their unit tests pass; every alert carries severity, summary,
description and a runbook_url that names a section of alerts/runbook.md; every alert is shown firing and quiet."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.support import paths, tools

ALERTS = paths.REPO / "alerts"
RULES = ALERTS / "khan.rules.yml"
RULE_TESTS = sorted((ALERTS / "tests").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = tools.require_tool("promtool", "prometheus")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=ALERTS, check=False)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules() -> None:
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS
    done = promtool("test", "rules", *(str(path.relative_to(ALERTS)) for path in RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_is_complete_and_links_its_runbook_section(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    annotations = rule["annotations"]
    assert annotations["summary"]
    assert "{{" in annotations["description"]  # templated with the labels or value
    assert annotations["runbook_url"] == f"alerts/runbook.md#{rule['alert'].lower()}"
    assert f"\n## {rule['alert']}\n" in (ALERTS / "runbook.md").read_text()
    # khan is selected by metric name or job="khan"; nothing else is required of a target's labels.
    assert re.search(r"\bkhan[_:]|up\{job=\"khan\"\}", rule["expr"])


def test_every_alert_is_shown_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - firing == set()
    assert names - quiet == set()
