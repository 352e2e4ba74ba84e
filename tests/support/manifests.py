"""deploy/'s two installs as objects: `kubectl kustomize` of a kustomization and `helm template` of the chart,
and how the two are compared. kubectl and helm are `make tools`'s (tests/kube/install_tools.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support import paths, tools
from tests.support.kube_cluster import kubectl, kubectl_minor

DEPLOY = paths.REPO / "deploy"
BASE = DEPLOY / "base"
OPERATOR = DEPLOY / "prometheus-operator"
CHART = DEPLOY / "helm" / "khan"
RELEASE = NAMESPACE = "khan"
KUSTOMIZE_DIRECTORIES_SINCE = 21  # kubectl's minor version whose kustomize takes directories in `resources`

# The labels that say who installed an object: the chart sets them, deploy/ cannot know them. Every other label
# (name, instance, version, part-of) is the same in both.
INSTALLER_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")

Object = dict[str, Any]


def documents(text: str) -> list[Object]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomized(directory: Path) -> list[Object]:
    """The objects `kubectl apply -k` sends for a kustomization, built by kubectl's own kustomize (1.21 or newer:
    Debian's 1.20 embeds kustomize 2, which takes no directories in `resources`)."""
    try:
        kubectl()
    except RuntimeError as exc:
        tools.missing(str(exc))
    if kubectl_minor() < KUSTOMIZE_DIRECTORIES_SINCE:
        tools.missing(f"{kubectl()} is older than 1.{KUSTOMIZE_DIRECTORIES_SINCE}: run `make tools`")
    built = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=True)
    return documents(built.stdout)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools.require_kube_tool("helm"), *args], capture_output=True, text=True, timeout=60)


def value_flags(values: dict[str, str]) -> list[str]:
    """--set-json KEY=JSON for each value, so that a value's type is exactly what the test means."""
    return [flag for key, value in values.items() for flag in ("--set-json", f"{key}={value}")]


def rendered(values: dict[str, str] | None = None, release: str = RELEASE, namespace: str = NAMESPACE) -> list[Object]:
    """`helm template` of the chart with these values (JSON texts by dotted key); fails on any error."""
    result = helm("template", release, str(CHART), "--namespace", namespace, *value_flags(values or {}))
    assert result.returncode == 0, result.stderr
    return documents(result.stdout)


def without_installer_labels(value: Any) -> Any:
    """The object with the labels that say who installed it removed, wherever they are (metadata, the pod
    template)."""
    if isinstance(value, dict):
        return {key: without_installer_labels(item) for key, item in value.items() if key not in INSTALLER_LABELS}
    if isinstance(value, list):
        return [without_installer_labels(item) for item in value]
    return value


def by_identity(objects: Iterable[Object], skip_kinds: Sequence[str] = ()) -> dict[tuple[str, str], Object]:
    """Objects by (kind, name), each without its installer labels."""
    return {
        (obj["kind"], obj["metadata"]["name"]): without_installer_labels(obj)
        for obj in objects
        if obj["kind"] not in skip_kinds
    }


def minimal_crd(kind: str, plural: str) -> Object:
    """The Prometheus Operator's CRD reduced to its name and scope: enough for the API to accept the kind."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }


OPERATOR_KINDS = (
    ("PodMonitor", "podmonitors"),
    ("ServiceMonitor", "servicemonitors"),
    ("PrometheusRule", "prometheusrules"),
)
