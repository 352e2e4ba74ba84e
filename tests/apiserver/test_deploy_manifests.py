"""deploy/: both kustomizations, built and sent by kubectl with `apply --dry-run=server`, pass the real
kube-apiserver, and the DaemonSet asks for no more than the agent needs. (The PrometheusRule is generated from
alerts/khan.rules.yml's configuration; `python -m alerts.generate --check` checks it is current.)"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.dry_run import Applier, dry_run_cluster
from tests.support.kube_cluster import object_path
from tests.support.manifests import BASE, DEPLOY, OPERATOR, kustomized

# The dashboards' ConfigMaps (dashboards/kustomization.yaml) come with both; test_helm_chart.py compares them.
NOT_COUNTED = ("ConfigMap",)


def daemonset() -> dict[str, Any]:
    (found,) = [obj for obj in kustomized(BASE) if obj["kind"] == "DaemonSet"]
    return found


def test_the_two_kustomizations_list_the_base_and_the_operator_objects() -> None:
    plain = ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service"]
    plain += ["ClusterRole", "ClusterRoleBinding"]  # khan-metrics-reader, for whoever scrapes
    operator = [*plain, "PodMonitor", "PrometheusRule", "ServiceAccount", "Secret", "ClusterRoleBinding"]
    assert sorted(obj["kind"] for obj in kustomized(DEPLOY) if obj["kind"] not in NOT_COUNTED) == sorted(plain)
    assert sorted(obj["kind"] for obj in kustomized(OPERATOR) if obj["kind"] not in NOT_COUNTED) == sorted(operator)


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
    assert {container[probe]["httpGet"]["scheme"] for probe in ("livenessProbe", "readinessProbe")} == {"HTTPS"}
    assert set(container["resources"]) == {"requests", "limits"}
    annotations = daemonset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"]) == "9986"
    assert annotations["prometheus.io/scheme"] == "https"


def test_the_daemonset_is_hardened_and_protected() -> None:
    pod = daemonset()["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["priorityClassName"] == "system-node-critical"
    (container,) = pod["containers"]
    name, _, version = container["image"].partition(":")
    assert name == "khan"
    assert version not in ("", "latest")
    assert container["args"] == ["agent", "--auth=kubernetes", "--tls-self-signed"]
    (namespace,) = [obj for obj in kustomized(BASE) if obj["kind"] == "Namespace"]
    # hostNetwork and NET_ADMIN are refused by the baseline level; only this namespace is privileged.
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_the_pod_monitor_scrapes_https_with_the_scraper_token() -> None:
    objects = kustomized(OPERATOR)
    (monitor,) = [obj for obj in objects if obj["kind"] == "PodMonitor"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    secret_name = endpoint["authorization"]["credentials"]["name"]
    (secret,) = [obj for obj in objects if obj["kind"] == "Secret"]
    assert secret["metadata"]["name"] == secret_name
    assert secret["type"] == "kubernetes.io/service-account-token"
    scraper = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    (binding,) = [obj for obj in objects if obj["kind"] == "ClusterRoleBinding" and obj["metadata"]["name"] == scraper]
    assert binding["roleRef"]["name"] == "khan-metrics-reader"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": scraper, "namespace": "khan"}]


def plain_prometheus_recipe() -> list[dict[str, Any]]:
    """The scrape job deploy/README.md gives for plain Prometheus (its one YAML block after the heading)."""
    text = (DEPLOY / "README.md").read_text()
    block = text[text.index("**Plain Prometheus:**") :].split("```yaml\n", 1)[1].split("```", 1)[0]
    jobs: list[dict[str, Any]] = yaml.safe_load(block)
    return jobs


def test_the_plain_prometheus_recipe_sends_its_token_only_to_the_khan_namespace(tmp_path: Path) -> None:
    """It sends Prometheus's own token without verifying the server: a pod labelled like khan's in any other
    namespace must not be scraped, or whoever may create one collects the token."""
    (job,) = plain_prometheus_recipe()
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["role"] == "pod"
    assert discovery["namespaces"] == {"names": [daemonset()["metadata"]["namespace"]]}
    assert job["tls_config"] == {"insecure_skip_verify": True}  # why the namespace matters
    # Debian's Prometheus is built without Kubernetes discovery: promtool checks the rest of the job.
    checkable = {key: value for key, value in job.items() if key != "kubernetes_sd_configs"}
    checkable["static_configs"] = [{"targets": ["127.0.0.1:9986"]}]
    (tmp_path / "token").write_text("a token")  # promtool wants the file to exist; this is no pod
    checkable["authorization"] = {**job["authorization"], "credentials_file": str(tmp_path / "token")}
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [checkable]}))
    checked = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.fixture(scope="module")
def applier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applier]:
    with dry_run_cluster(tmp_path_factory.mktemp("deploy")) as running:
        yield running


@pytest.mark.parametrize("directory", [DEPLOY, OPERATOR], ids=["plain", "prometheus-operator"])
def test_kubectl_apply_passes_the_api_servers_dry_run(applier: Applier, directory: Path) -> None:
    objects = kustomized(directory)
    assert applier.accepted(objects) == sorted((obj["kind"].lower(), obj["metadata"]["name"]) for obj in objects)
    nothing = applier.cluster.request("GET", object_path("DaemonSet", namespace="khan"))
    assert nothing["items"] == []  # a dry run makes nothing


def test_the_dry_run_rejects_a_broken_daemonset(applier: Applier) -> None:
    broken = daemonset()
    broken["spec"]["template"]["metadata"]["labels"] = {"app.kubernetes.io/name": "other"}  # selector no longer matches
    result = applier.apply("-f", "-", stdin=yaml.safe_dump(broken))
    assert result.returncode != 0
    assert "`selector` does not match template `labels`" in result.stderr, result.stderr
