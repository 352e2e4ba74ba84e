"""The one configuration of khan's rules and dashboards: the `monitoring` section of the Helm chart's values.

The chart renders its PrometheusRule and dashboards from the same section at install time, so the committed
files (the defaults) and a Helm install agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VALUES = REPO / "deploy" / "helm" / "khan" / "values.yaml"


@dataclass(frozen=True)
class MonitoringConfig:
    job: str
    cluster_label: str
    runbook_url: str


def parse(section: dict[str, Any]) -> MonitoringConfig:
    return MonitoringConfig(
        job=str(section["job"]),
        cluster_label=str(section["clusterLabel"]),
        runbook_url=str(section["runbookUrl"]),
    )


def load(values: Path = DEFAULT_VALUES) -> MonitoringConfig:
    """The `monitoring` section of a values file; keys it leaves out take the chart's defaults."""
    section = yaml.safe_load(DEFAULT_VALUES.read_text())["monitoring"]
    if values != DEFAULT_VALUES:
        section = {**section, **((yaml.safe_load(values.read_text()) or {}).get("monitoring") or {})}
    return parse(section)
