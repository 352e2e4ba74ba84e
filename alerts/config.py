"""The one configuration of khan's rules and dashboards: the `monitoring` section of the Helm chart's values.

The chart renders its PrometheusRule and dashboards from the same section at install time, so the committed
files (the defaults) and a Helm install agree by construction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VALUES = REPO / "deploy" / "helm" / "khan" / "values.yaml"

# Every tunable of the alerts, by its key under monitoring.thresholds / monitoring.for, with what it means (the
# values schema's descriptions). A share is a fraction of 1; a duration is a number and one unit of s, m or h.
THRESHOLDS: dict[str, str] = {
    "connectionLeakGrowth": "KhanConnectionLeak: connections one pair gains over an hour",
    "idlePilingGrowth": "KhanIdleConnectionsPiling: idle connections one pair gains over an hour",
    "idlePilingMinimum": "KhanIdleConnectionsPiling: idle connections of one pair, at least (with the share)",
    "idlePilingShare": "KhanIdleConnectionsPiling: share of the pair's connections that are idle, at least",
    "idlePilingLongestSeconds": "KhanIdleConnectionsPiling: the pair's longest idle time in seconds, with the share",
    "serverOverloadedConnections": "KhanServerOverloaded: inbound connections of a destination, at least",
    "serverOverloadedRise": "KhanServerOverloaded: times the count of an hour ago, at least",
    "connectFailuresHalfOpen": "KhanConnectFailures: half-open TCP connections to one destination, at least",
    "unknownClientsConnections": "KhanUnknownClients: connections from outside to one destination, at least",
    "unknownClientsRise": "KhanUnknownClients: times the count of an hour ago, at least",
    "pollsFailingSeconds": "KhanPollsFailing: seconds since the last successful poll, more than",
    "pollSlowShare": "KhanPollSlow: share of the poll interval a poll takes, more than",
    "eventsLost": "KhanEventsLost: conntrack events dropped in 10 minutes, more than",
    "conntrackTableFillingShare": "KhanConntrackTableFilling (and KhanConntrackTableHog): share of the table in use",
    "conntrackTableFullShare": "KhanConntrackTableFull: share of the table in use, at least",
    "conntrackTableHogShare": "KhanConntrackTableHog: share of the table's limit the top source holds, at least",
    "conntrackDrops": "KhanConntrackDrops: drops, early drops or failed inserts in 5 minutes, more than",
    "dnsUnreplied": "KhanDNSUnreplied: unreplied UDP entries to port 53 from one client, at least",
    "connectionLimitShare": "KhanConnectionLimitNear: share of the declared limit in use, at least",
}
DURATIONS: dict[str, str] = {
    "connectionLeak": "KhanConnectionLeak",
    "idlePiling": "KhanIdleConnectionsPiling",
    "serverOverloaded": "KhanServerOverloaded",
    "connectFailures": "KhanConnectFailures",
    "unknownClients": "KhanUnknownClients",
    "agentDown": "KhanAgentDown",
    "agentMissing": "KhanAgentMissing",
    "agentsAbsent": "KhanAgentsAbsent",
    "pollsFailing": "KhanPollsFailing",
    "pollSlow": "KhanPollSlow",
    "inventoryNotSynced": "KhanInventoryNotSynced",
    "eventsLost": "KhanEventsLost",
    "seriesFolded": "KhanSeriesFolded",
    "conntrackTableFilling": "KhanConntrackTableFilling",
    "conntrackTableFull": "KhanConntrackTableFull",
    "conntrackTableHog": "KhanConntrackTableHog",
    "conntrackDrops": "KhanConntrackDrops",
    "dnsUnreplied": "KhanDNSUnreplied",
    "connectionLimitNear": "KhanConnectionLimitNear",
}
# What each value may look like: they land inside PromQL and YAML, so nothing that could break out of either.
# A duration as Prometheus writes one: 90s, 5m, 1h30m, 1d. (The defaults keep to one number and one unit, the form
# tests/e2e's scaled copy of the rules divides: test_scaling_divides_every_duration checks it.)
JOB_PATTERN = r'^[^"\\\n]+$'
LABEL_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
URL_PATTERN = r'^https?://[^\s"\\#]+$'
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d|w|y))+$"


@dataclass(frozen=True)
class MonitoringConfig:
    job: str
    cluster_label: str
    runbook_url: str
    # Keys of THRESHOLDS and DURATIONS; empty when built by hand (the generator fills in the chart's defaults).
    thresholds: Mapping[str, float] = field(default_factory=dict)
    durations: Mapping[str, str] = field(default_factory=dict)


def _checked(value: str, pattern: str, what: str) -> str:
    if not re.match(pattern, value):
        raise ValueError(f"monitoring.{what} {value!r} does not match {pattern}")
    return value


def _known(section: Mapping[str, Any], known: Mapping[str, str], what: str) -> None:
    unknown = set(section) - set(known)
    if unknown:
        raise ValueError(f"monitoring.{what} has unknown keys {sorted(unknown)}; known: {sorted(known)}")


def parse(section: dict[str, Any]) -> MonitoringConfig:
    thresholds = section.get("thresholds") or {}
    durations = section.get("for") or {}
    _known(thresholds, THRESHOLDS, "thresholds")
    _known(durations, DURATIONS, "for")
    for key, value in thresholds.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"monitoring.thresholds.{key} {value!r} is not a number >= 0")
    return MonitoringConfig(
        job=_checked(str(section["job"]), JOB_PATTERN, "job"),
        cluster_label=_checked(str(section["clusterLabel"]), LABEL_PATTERN, "clusterLabel"),
        runbook_url=_checked(str(section["runbookUrl"]), URL_PATTERN, "runbookUrl"),
        thresholds={key: float(value) for key, value in thresholds.items()},
        durations={key: _checked(str(value), DURATION_PATTERN, f"for.{key}") for key, value in durations.items()},
    )


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values merged the way Helm merges a values file over the chart's: maps key by key, anything else replaced."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def load(values: Path = DEFAULT_VALUES) -> MonitoringConfig:
    """The `monitoring` section of a values file; keys it leaves out take the chart's defaults."""
    section = yaml.safe_load(DEFAULT_VALUES.read_text())["monitoring"]
    if values != DEFAULT_VALUES:
        section = merged(section, (yaml.safe_load(values.read_text()) or {}).get("monitoring") or {})
    return parse(section)


def kustomize_labels() -> dict[str, str]:
    """The labels deploy/base puts on every object: the chart's (templates/_helpers.tpl) for a release named khan,
    less the two that say Helm installed it (helm.sh/chart, app.kubernetes.io/managed-by)."""
    chart = yaml.safe_load((DEFAULT_VALUES.parent / "Chart.yaml").read_text())
    return {
        "app.kubernetes.io/name": "khan",
        "app.kubernetes.io/instance": "khan",
        "app.kubernetes.io/version": str(chart["appVersion"]),
        "app.kubernetes.io/part-of": "khan",
    }
