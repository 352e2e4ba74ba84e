"""deploy/: the manifests pass the real kube-apiserver's server-side dry run, the DaemonSet asks for no more
than the agent needs, and the PrometheusRule carries exactly alerts/khan.rules.yml."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from khan.lab import Lab, private_prefix
from tests.kube_cluster import ApiError, Cluster, object_path, running_cluster

DEPLOY = Path(__file__).parent.parent / "deploy"
BASE = DEPLOY / "base"
OPERATOR = DEPLOY / "prometheus-operator"


def kustomized(directory: Path) -> list[dict[str, Any]]:
    """The objects a kustomization lists (plain resources only, as ours are), depth first."""
    objects: list[dict[str, Any]] = []
    for entry in yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]:
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += kustomized(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


def daemonset() -> dict[str, Any]:
    (found,) = [obj for obj in kustomized(BASE) if obj["kind"] == "DaemonSet"]
    return found


def test_the_two_kustomizations_list_the_base_and_the_operator_objects() -> None:
    assert [obj["kind"] for obj in kustomized(DEPLOY)] == [
        "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service",
    ]  # fmt: skip
    assert [obj["kind"] for obj in kustomized(OPERATOR)][-2:] == ["PodMonitor", "PrometheusRule"]


def test_the_daemonset_runs_on_every_node_with_net_admin_only() -> None:
    pod = daemonset()["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["serviceAccountName"] == "khan"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    env = {item["name"]: item for item in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert set(container["resources"]) == {"requests", "limits"}
    annotations = daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"]) == "9986"


def test_the_prometheus_rule_carries_the_rule_file() -> None:
    def normalised(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for group in groups:
            for rule in group["rules"]:
                rule["expr"] = " ".join(rule["expr"].split())
        return groups

    rules = yaml.safe_load((DEPLOY.parent / "alerts" / "khan.rules.yml").read_text())
    wrapped = yaml.safe_load((OPERATOR / "prometheusrule.yaml").read_text())
    assert normalised(wrapped["spec"]["groups"]) == normalised(rules["groups"])


def minimal_crd(kind: str, plural: str) -> dict[str, Any]:
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with (
        Lab.create(prefix=private_prefix("khandeploy")) as lab,
        running_cluster(lab.netns("node1"), "10.250.0.1") as running,
    ):
        running.ensure_namespace("khan")  # the dry run of the Namespace creates nothing for the others
        for kind, plural in (("PodMonitor", "podmonitors"), ("PrometheusRule", "prometheusrules")):
            running.request("POST", object_path("CustomResourceDefinition"), minimal_crd(kind, plural))
        yield running


def dry_run(cluster: Cluster, obj: dict[str, Any], seconds: float = 20) -> Any:
    path = object_path(obj["kind"], namespace=obj["metadata"].get("namespace")) + "?dryRun=All"
    deadline = time.monotonic() + seconds
    while True:
        try:
            return cluster.request("POST", path, obj)
        except ApiError as exc:  # a new CRD's kind is served a moment after it is created
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.root
def test_every_manifest_passes_the_api_servers_dry_run(cluster: Cluster) -> None:
    for obj in kustomized(OPERATOR):
        if obj["kind"] == "Namespace":
            continue  # created above, so that the namespaced objects have somewhere to go
        answer = dry_run(cluster, obj)
        assert answer["kind"] == obj["kind"]
        assert answer["metadata"]["name"] == obj["metadata"]["name"]
    assert cluster.request("GET", object_path("DaemonSet", namespace="khan"))["items"] == []  # nothing was made


@pytest.mark.root
def test_the_dry_run_rejects_a_broken_daemonset(cluster: Cluster) -> None:
    broken = daemonset()
    broken["spec"]["template"]["metadata"]["labels"] = {"app.kubernetes.io/name": "other"}  # selector no longer matches
    with pytest.raises(ApiError) as refused:
        dry_run(cluster, broken)
    assert refused.value.status == 422
