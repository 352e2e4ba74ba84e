"""deploy/'s RBAC on a real kube-apiserver with RBAC authorization on: the ServiceAccount can read pods, services
and nodes and nothing else; an agent missing one permission says so clearly, keeps retrying and never crashes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from khan.demo.inventory import inventory_objects
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.traffic import start_demo_traffic
from tests.support.kube_agent import LAB_TCP, RBAC_FILES, agent_in, create_lab_objects, sample
from tests.support.kube_cluster import DEPLOY, KHAN_USER, ApiError, Cluster, running_cluster

NO_WATCH_USER = "system:serviceaccount:khan:khan-nowatch"
UNBOUND_USER = "system:serviceaccount:khan:nobody"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Cluster, Path]]:
    workdir = tmp_path_factory.mktemp("rbac")
    with Lab.create(prefix=private_prefix("khanrbac")) as lab:
        start_demo_traffic(lab)
        users = (KHAN_USER, NO_WATCH_USER, UNBOUND_USER)
        with running_cluster(lab.netns("node1"), "10.250.0.1", users=users) as cluster:
            cluster.apply_files(RBAC_FILES)
            grant_all_but_watch_on_services(cluster)
            create_lab_objects(cluster, inventory_objects())
            yield lab, cluster, workdir


def grant_all_but_watch_on_services(cluster: Cluster) -> None:
    """deploy/'s role with `watch` removed for services, bound to its own ServiceAccount."""
    role = yaml.safe_load((DEPLOY / "clusterrole.yaml").read_text())
    role["metadata"]["name"] = "khan-nowatch"
    rule = role["rules"][0]
    role["rules"] = [
        {**rule, "resources": ["pods", "nodes"]},
        {**rule, "resources": ["services"], "verbs": ["get", "list"]},
    ]
    binding = yaml.safe_load((DEPLOY / "clusterrolebinding.yaml").read_text())
    binding["metadata"]["name"] = "khan-nowatch"
    binding["roleRef"]["name"] = "khan-nowatch"
    binding["subjects"][0]["name"] = "khan-nowatch"
    account = yaml.safe_load((DEPLOY / "serviceaccount.yaml").read_text())
    account["metadata"]["name"] = "khan-nowatch"
    for obj in (account, role, binding):
        cluster.create(copy.deepcopy(obj))


def test_the_cluster_role_grants_read_only_access_to_three_resources() -> None:
    role = yaml.safe_load((DEPLOY / "clusterrole.yaml").read_text())
    assert role["kind"] == "ClusterRole"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "services", "nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
    binding = yaml.safe_load((DEPLOY / "clusterrolebinding.yaml").read_text())
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "khan"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "khan", "namespace": "khan"}]
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert {path.name for path in RBAC_FILES} <= set(kustomization["resources"])


@pytest.mark.parametrize("path", ["/api/v1/pods", "/api/v1/services", "/api/v1/nodes", "/api/v1/nodes/node1"])
def test_the_service_account_reads_pods_services_and_nodes(world: tuple[Lab, Cluster, Path], path: str) -> None:
    _, cluster, _ = world
    assert cluster.request("GET", path, user=KHAN_USER)["kind"] in ("PodList", "ServiceList", "NodeList", "Node")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/secrets"),
        ("GET", "/api/v1/configmaps"),
        ("GET", "/api/v1/namespaces/shop/pods/pod-a/log"),
        ("DELETE", "/api/v1/namespaces/shop/pods/pod-a"),
        ("PATCH", "/api/v1/nodes/node1"),
        ("POST", "/api/v1/namespaces/shop/pods/pod-a/exec"),
        ("GET", "/apis/apps/v1/deployments"),
    ],
)
def test_the_service_account_can_do_nothing_else(world: tuple[Lab, Cluster, Path], method: str, path: str) -> None:
    _, cluster, _ = world
    body = {} if method in ("PATCH", "POST") else None
    with pytest.raises(ApiError) as refused:
        cluster.request(method, path, body, user=KHAN_USER, content_type="application/merge-patch+json")
    assert refused.value.status == 403


def test_the_service_account_may_ask_the_api_to_review_tokens_and_access(world: tuple[Lab, Cluster, Path]) -> None:
    """What --auth kubernetes does for each new scraper token, as deploy/'s ServiceAccount."""
    _, cluster, _ = world
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": cluster.tokens[UNBOUND_USER]},
    }
    identity = cluster.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body, user=KHAN_USER)["status"]
    assert identity["authenticated"] is True
    assert identity["user"]["username"] == UNBOUND_USER
    spec = {"user": UNBOUND_USER, "groups": identity["user"]["groups"]}
    spec["nonResourceAttributes"] = {"path": "/metrics", "verb": "get"}
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
    access = cluster.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review, user=KHAN_USER)
    assert access["status"].get("allowed", False) is False  # nothing binds khan-metrics-reader to it here
    with pytest.raises(ApiError) as refused:  # reviews are not for everyone
        cluster.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body, user=UNBOUND_USER)
    assert refused.value.status == 403


def test_the_metrics_reader_role_grants_get_on_metrics_only() -> None:
    role = yaml.safe_load((DEPLOY / "metrics-reader-clusterrole.yaml").read_text())
    assert role["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    binding = yaml.safe_load((DEPLOY / "metrics-reader-clusterrolebinding.yaml").read_text())
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == "khan-metrics-reader"


def test_in_cluster_the_service_account_token_is_enough(world: tuple[Lab, Cluster, Path]) -> None:
    # No flag: KUBERNETES_SERVICE_HOST is set and the token and CA sit where a pod has them.
    lab, cluster, workdir = world
    with agent_in(lab, cluster, KHAN_USER, workdir, in_cluster=True) as agent:
        agent.wait_ready()
        assert set(agent.series()) == LAB_TCP
        (api,) = [line for line in agent.log() if line.get("event") == "kubernetes_api"]
        assert api["config"] == "in-cluster"
        assert api["host"] == "https://127.0.0.1:6443"


def test_missing_watch_is_a_clear_error_retried_without_crashing(world: tuple[Lab, Cluster, Path]) -> None:
    lab, cluster, workdir = world
    with agent_in(lab, cluster, NO_WATCH_USER, workdir) as agent:
        agent.wait_ready()  # all three lists work
        assert set(agent.series()) == LAB_TCP
        agent.wait_until(
            lambda: (sample(agent.metrics(), "khan_kube_api_errors_total", resource="services", code="403") or 0) >= 3,
            20,
            "refused watches retried",
        )
        text = agent.metrics()
        assert sample(text, "khan_kube_api_errors_total", resource="services", verb="watch", code="403")
        assert sample(text, "khan_kube_api_errors_total", resource="pods") is None
        assert (sample(text, "khan_inventory_watch_starts_total", resource="services", reason="error") or 0) >= 2
        assert sample(text, "khan_inventory_synced", resource="services") == 1
        refusals = [
            line for line in agent.log() if line.get("event") == "watch_restart" and line["resource"] == "services"
        ]
        assert refusals
        first = refusals[0]
        assert first["level"] == "warning"
        assert first["reason"] == "error"
        assert first["error"].startswith("403 ")
        assert f'User "{NO_WATCH_USER}" cannot watch resource "services"' in first["error"]
        assert agent.alive()


def test_no_permission_at_all_keeps_the_agent_unready_and_alive(world: tuple[Lab, Cluster, Path]) -> None:
    lab, cluster, workdir = world
    with agent_in(lab, cluster, UNBOUND_USER, workdir) as agent:
        agent.wait_until(
            lambda: (sample(agent.metrics(), "khan_kube_api_errors_total", verb="list", code="403") or 0) >= 6,
            20,
            "refused lists retried",
        )
        # /readyz is open to anyone and says only that; the reason is in the log (and in /metrics).
        assert agent.get("/readyz") == (503, "not ready: inventory not synced\n")
        refusals = [line.get("error", "") for line in agent.log() if line.get("event") == "watch_restart"]
        assert any(f'User "{UNBOUND_USER}" cannot list resource "pods"' in error for error in refusals)
        text = agent.metrics()
        assert "khan_connection{" not in text  # nothing is attributed before the inventory is known
        assert sample(text, "khan_inventory_synced", resource="pods") == 0
        assert sample(text, "khan_polls_total") == 0
        assert agent.alive()
