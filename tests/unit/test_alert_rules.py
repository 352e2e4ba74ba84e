"""alerts/: the committed rules are what alerts/generate.py makes of the chart's `monitoring` values; promtool
accepts them and their unit tests pass; every alert has a `for`, severity, summary, description and an absolute
runbook_url that names a section of alerts/runbook.md, and is shown firing and quiet; the cluster label, job and
runbook URL of another configuration reach every rule; the chart's PrometheusRule renders the same rules."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import config, generate
from tests.support import paths, tools

ALERTS = paths.REPO / "alerts"
RULES = ALERTS / "khan.rules.yml"
RULE_TESTS = sorted((ALERTS / "tests").glob("*.yml"))
CHART = paths.REPO / "deploy" / "helm" / "khan"
OPERATOR_RULE = paths.REPO / "deploy" / "prometheus-operator" / "prometheusrule.yaml"
OTHER_VALUES = {
    "monitoring": {
        "job": "conntrack",
        "clusterLabel": "k8s_cluster",
        "runbookUrl": "https://runbooks.example.com/khan",
        "thresholds": {"conntrackTableFullShare": 0.95, "dnsUnreplied": 25},
        "for": {"conntrackTableFull": "1m"},
    }
}


def promtool(*args: str, cwd: Path = ALERTS) -> subprocess.CompletedProcess[str]:
    binary = tools.require_tool("promtool", "prometheus")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd, check=False)


def rules_of(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    groups = document["spec"]["groups"] if "spec" in document else document["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts(path: Path = RULES) -> list[dict[str, Any]]:
    return [rule for rule in rules_of(path) if "alert" in rule]


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generator's output for OTHER_VALUES, under a directory of its own."""
    out = tmp_path_factory.mktemp("other")
    values = out / "values.yaml"
    values.write_text(yaml.safe_dump(OTHER_VALUES))
    assert generate.main(["--values", str(values), "--out", str(out)]) == 0
    return out


def test_the_committed_files_are_what_the_generator_writes() -> None:
    assert generate.main(["--check"]) == 0, "run: python -m alerts.generate"


def test_every_tunable_has_a_default_in_the_chart_values() -> None:
    section = yaml.safe_load(config.DEFAULT_VALUES.read_text())["monitoring"]
    assert set(section["thresholds"]) == set(config.THRESHOLDS)
    assert set(section["for"]) == set(config.DURATIONS)
    assert {alert["alert"] for alert in alerts()} == set(config.DURATIONS.values())


def test_the_config_rejects_what_would_break_the_rules() -> None:
    good = yaml.safe_load(config.DEFAULT_VALUES.read_text())["monitoring"]
    for bad in (
        {"thresholds": {**good["thresholds"], "tableFullShare": 0.9}},  # a typo
        {"for": {**good["for"], "conntrackTableFull": "soon"}},  # not a duration
        {"clusterLabel": ""},
        {"clusterLabel": "k8s-cluster"},
        {"runbookUrl": "alerts/runbook.md"},
        {"job": 'khan"}'},
    ):
        with pytest.raises(ValueError, match="monitoring"):
            config.parse({**good, **bad})


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
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    assert not rule["for"].startswith("0")
    assert rule["labels"]["severity"] in ("info", "warning", "critical")
    annotations = rule["annotations"]
    assert annotations["summary"]
    assert "{{" in annotations["description"]  # templated with the labels or value
    assert annotations["runbook_url"] == f"{config.load().runbook_url}#{rule['alert'].lower()}"
    assert annotations["runbook_url"].startswith("https://")
    assert f"\n## {rule['alert']}\n" in (ALERTS / "runbook.md").read_text()
    # tests/e2e divides the durations of expressions and `for` by 30; one in an annotation would stay unscaled.
    assert not re.search(r"\b\d+[mh]\b", str(annotations))
    assert not re.search(r"\d+[smh]\d", rule["expr"])  # one unit per duration, the form it scales


def selectors_and_groupings(expr: str) -> tuple[list[str], list[str]]:
    """The selectors of khan's and Prometheus's series (metric{...} or a bare name), and every by/on clause."""
    selectors = re.findall(r"\b((?:khan_\w+|up)(?:\{[^}]*\})?)", expr)
    groupings = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr)
    return selectors, groupings


@pytest.mark.parametrize(
    ("source", "job", "cluster", "url"),
    [
        ("committed", "khan", "cluster", "https://github.com/khan-project/khan/blob/main/alerts/runbook.md"),
        ("other", "conntrack", "k8s_cluster", "https://runbooks.example.com/khan"),
    ],
)
def test_the_configuration_reaches_every_rule(source: str, job: str, cluster: str, url: str, other: Path) -> None:
    root = paths.REPO if source == "committed" else other
    rules = rules_of(root / generate.RULES_FILE)
    assert rules_of(root / generate.OPERATOR_FILE) == rules
    for rule in rules:
        selectors, groupings = selectors_and_groupings(rule["expr"])
        for selector in selectors:
            # Every selector of khan's series names the job; a bare `up` is a cluster's sign of life
            # (KhanAgentsAbsent), and it is grouped by the cluster label like the rest.
            assert f'job="{job}"' in selector or (selector == "up" and rule.get("alert") == "KhanAgentsAbsent")
        for grouping in groupings:
            assert cluster in [label.strip() for label in grouping.split(",")], (rule, grouping)
        assert "[[" not in str(rule)
        if "alert" in rule:
            assert rule["annotations"]["runbook_url"] == f"{url}#{rule['alert'].lower()}"
    text = (root / generate.RULES_FILE).read_text()
    if source == "other":  # nothing of the defaults is left
        assert 'job="khan"' not in text
        assert "(cluster," not in text
        assert "khan-project" not in text


def test_a_changed_threshold_and_duration_reach_their_alert(other: Path) -> None:
    (full,) = [rule for rule in alerts(other / generate.RULES_FILE) if rule["alert"] == "KhanConntrackTableFull"]
    assert full["for"] == "1m"
    assert ">= 0.95" in full["expr"]
    (dns,) = [rule for rule in alerts(other / generate.RULES_FILE) if rule["alert"] == "KhanDNSUnreplied"]
    assert ">= 25" in dns["expr"]
    done = promtool("check", "rules", str(other / generate.RULES_FILE))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_describes_every_tunable(other: Path) -> None:
    schema = generate.monitoring_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]["thresholds"]["properties"]) == set(config.THRESHOLDS)
    assert set(schema["properties"]["for"]["properties"]) == set(config.DURATIONS)
    # Without a chart schema the generator starts one; with one, it replaces only `monitoring`.
    written = yaml.safe_load((other / generate.SCHEMA_FILE).read_text())
    assert written["properties"] == {"monitoring": schema}
    kept = generate.schema_file('{"type": "object", "properties": {"image": {"type": "object"}}}')
    assert yaml.safe_load(kept)["properties"]["image"] == {"type": "object"}


@pytest.fixture(scope="module")
def chart() -> Path:
    return CHART


def helm_template(chart: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.require_kube_tool("helm"), "template", "khan", str(chart), "--namespace", "monitoring",
         "--show-only", "templates/prometheusrule.yaml", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_the_chart_renders_the_generated_rules(chart: Path, other: Path, tmp_path: Path) -> None:
    done = helm_template(
        chart, "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.additionalLabels.release=kps"
    )
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    assert rendered["kind"] == "PrometheusRule"
    assert rendered["metadata"]["name"] == "khan"
    assert rendered["metadata"]["namespace"] == "monitoring"
    assert rendered["metadata"]["labels"]["release"] == "kps"
    assert rendered["metadata"]["labels"]["app.kubernetes.io/name"] == "khan"
    assert rendered["spec"] == yaml.safe_load(OPERATOR_RULE.read_text())["spec"]

    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({**OTHER_VALUES, "prometheusRule": {"enabled": True}}))
    done = helm_template(chart, "-f", str(values))
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["spec"] == yaml.safe_load((other / generate.OPERATOR_FILE).read_text())["spec"]


def test_the_chart_renders_no_rule_unless_enabled(chart: Path) -> None:
    done = helm_template(chart, "--set", "prometheusRule.enabled=false")
    assert done.returncode != 0
    assert "could not find template" in done.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "monitoring.thresholds.tableFullShare=1",
        "monitoring.for.conntrackTableFull=soon",
        "monitoring.clusterLabel=k8s-cluster",
        "monitoring.runbok=https://x",
    ],
)
def test_the_chart_schema_rejects_a_bad_monitoring_value(chart: Path, bad: str) -> None:
    done = helm_template(chart, "--set", "prometheusRule.enabled=true", "--set", bad)
    assert done.returncode != 0
    assert "schema" in done.stderr.lower()


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
