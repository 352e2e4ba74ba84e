"""deploy/: both kustomizations, built and sent by kubectl with `apply --dry-run=server`, pass the real
kube-apiserver, the DaemonSet asks for no more than the agent needs, and the PrometheusRule carries exactly
alerts/khan.rules.yml."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from tests.support import paths
from tests.support.kube_cluster import ADMIN, ApiError, Cluster, kubectl, kubectl_minor, object_path, running_cluster
from tests.support.netns import run_in

DEPLOY = paths.REPO / "deploy"
BASE = DEPLOY / "base"
OPERATOR = DEPLOY / "prometheus-operator"
KUSTOMIZE_DIRECTORIES_SINCE = 21  # kubectl's minor version whose kustomize takes directories in `resources`


def kustomized(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k` sends for a kustomization, built by kubectl's own kustomize.

    kubectl before 1.21 (Debian's is 1.20) embeds kustomize 2, which takes only files in `resources`; there the
    test lists our plain kustomizations itself, files and directories depth first, as kustomize 4 and 5 do.
    """
    if kubectl_minor() >= KUSTOMIZE_DIRECTORIES_SINCE:
        built = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=True)
        return [doc for doc in yaml.safe_load_all(built.stdout) if doc]
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
    plain = ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "Service"]
    plain += ["ClusterRole", "ClusterRoleBinding"]  # khan-metrics-reader, for whoever scrapes
    operator = [*plain, "PodMonitor", "PrometheusRule", "ServiceAccount", "Secret", "ClusterRoleBinding"]
    assert sorted(obj["kind"] for obj in kustomized(DEPLOY)) == sorted(plain)
    assert sorted(obj["kind"] for obj in kustomized(OPERATOR)) == sorted(operator)


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


class Applier(NamedTuple):
    lab: Lab
    cluster: Cluster
    kubeconfig: Path

    def apply(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`kubectl apply --dry-run=server` as the cluster's admin, from node1 where the API server listens."""
        argv = [kubectl(), "--kubeconfig", str(self.kubeconfig), "apply", "--dry-run=server", *args]
        return run_in(self.lab, "node1", argv, input=stdin, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def applier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applier]:
    with (
        Lab.create(prefix=private_prefix("khandeploy")) as lab,
        running_cluster(lab.netns("node1"), "10.250.0.1") as running,
    ):
        # A dry-run Namespace is not there for the objects that go in it (kubectl's documented limit), so it
        # exists beforehand, as it would on a second apply.
        running.ensure_namespace("khan")
        for kind, plural in (("PodMonitor", "podmonitors"), ("PrometheusRule", "prometheusrules")):
            running.request("POST", object_path("CustomResourceDefinition"), minimal_crd(kind, plural))
        wait_for_kinds(running, ("PodMonitor", "PrometheusRule"))
        yield Applier(lab, running, running.kubeconfig(ADMIN, tmp_path_factory.mktemp("deploy") / "kubeconfig"))


def wait_for_kinds(cluster: Cluster, kinds: tuple[str, ...], seconds: float = 20) -> None:
    """A new CRD's kind is served a moment after it is created."""
    deadline = time.monotonic() + seconds
    for kind in kinds:
        while True:
            try:
                cluster.request("GET", object_path(kind, namespace="khan"))
                break
            except ApiError as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.mark.parametrize("directory", [DEPLOY, OPERATOR], ids=["plain", "prometheus-operator"])
def test_kubectl_apply_passes_the_api_servers_dry_run(applier: Applier, directory: Path) -> None:
    objects = kustomized(directory)
    result = applier.apply("-f", "-", stdin=yaml.safe_dump_all(objects))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert all(line.endswith("(server dry run)") for line in lines), result.stdout
    # "daemonset.apps/khan created (server dry run)": the kind (lower case, before its group) and the name.
    accepted = sorted((line.split()[0].split(".")[0].split("/")[0], line.split()[0].split("/")[1]) for line in lines)
    assert accepted == sorted((obj["kind"].lower(), obj["metadata"]["name"]) for obj in objects)
    nothing = applier.cluster.request("GET", object_path("DaemonSet", namespace="khan"))
    assert nothing["items"] == []  # a dry run makes nothing


def test_the_dry_run_rejects_a_broken_daemonset(applier: Applier) -> None:
    broken = daemonset()
    broken["spec"]["template"]["metadata"]["labels"] = {"app.kubernetes.io/name": "other"}  # selector no longer matches
    result = applier.apply("-f", "-", stdin=yaml.safe_dump(broken))
    assert result.returncode != 0
    assert "`selector` does not match template `labels`" in result.stderr, result.stderr
