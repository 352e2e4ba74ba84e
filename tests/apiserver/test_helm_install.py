"""The chart's objects, rendered by `helm template` with the default values and with every optional part on,
pass `kubectl apply --dry-run=server` against the real kube-apiserver (the Prometheus Operator's kinds through
minimal CRDs of the same names; the `khan` namespace made beforehand, as `helm install -n khan` needs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.chart_values import VARIANTS
from tests.support.dry_run import Applier, dry_run_cluster
from tests.support.kube_cluster import object_path
from tests.support.manifests import rendered


@pytest.fixture(scope="module")
def applier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applier]:
    with dry_run_cluster(tmp_path_factory.mktemp("chart")) as running:
        yield running


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_helm_template_passes_the_api_servers_dry_run(applier: Applier, variant: str) -> None:
    objects = rendered(VARIANTS[variant])
    assert applier.accepted(objects) == sorted((obj["kind"].lower(), obj["metadata"]["name"]) for obj in objects)
    nothing = applier.cluster.request("GET", object_path("DaemonSet", namespace="khan"))
    assert nothing["items"] == []  # a dry run makes nothing


def test_the_optional_parts_are_all_sent(applier: Applier) -> None:
    kinds = {obj["kind"] for variant in ("everything", "everything-by-service") for obj in rendered(VARIANTS[variant])}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Secret", "ConfigMap"} <= kinds
