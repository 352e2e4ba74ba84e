"""deploy/helm/khan: helm lints it, renders it with the defaults and with every optional part on, refuses a
typo'd or mistyped value with the schema's message, and its objects with the default values are deploy/'s (with
the PodMonitor and the PrometheusRule on, deploy/prometheus-operator/'s) but for the labels that say who installed
them. Needs helm and kubectl 1.21+ (`make tools`); the API server's verdict is tests/apiserver/test_helm_install.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from khan.options import AGENT, options_of
from tests.support.chart_values import BYO, DIGEST, EVERYTHING, EVERYTHING_BY_SERVICE, OPEN, VARIANTS
from tests.support.manifests import (
    CHART,
    DEPLOY,
    INSTALLER_LABELS,
    OPERATOR,
    Object,
    by_identity,
    helm,
    kustomized,
    rendered,
    value_flags,
    without_installer_labels,
)

RULE_TEMPLATE = CHART / "templates" / "prometheusrule.yaml"


def rule_template_generated() -> None:
    """The PrometheusRule's template is written by `python -m alerts.generate`, not by hand."""
    assert RULE_TEMPLATE.exists(), f"{RULE_TEMPLATE} is missing: run `python -m alerts.generate`"


def one(objects: list[Object], kind: str) -> Object:
    (found,) = [obj for obj in objects if obj["kind"] == kind]
    return found


def container(objects: list[Object]) -> Object:
    (agent,) = one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    found: Object = agent
    return found


def test_helm_lint_passes_with_the_defaults() -> None:
    result = helm("lint", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_helm_lint_strict_passes_with_every_optional_part(variant: str) -> None:
    result = helm("lint", "--strict", str(CHART), *value_flags(VARIANTS[variant]))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"podMonitr": '{"enabled": true}'}, "additional properties 'podMonitr' not allowed"),
        ({"podMonitor.enabeld": "true"}, "at '/podMonitor': additional properties 'enabeld' not allowed"),
        ({"agent.maxSerie": "5000"}, "at '/agent': additional properties 'maxSerie' not allowed"),
        ({"port": '"9986"'}, "at '/port': got string, want integer"),
        ({"dashboards.enabled": '"yes"'}, "at '/dashboards/enabled': got string, want boolean"),
        ({"web.auth": '"token"'}, "at '/web/auth'"),
        ({"agent.maxSeries": "50"}, "at '/agent/maxSeries': minimum: got 50, want 100"),
        ({"image.digest": '"latest"'}, "at '/image/digest'"),
    ],
    ids=[
        "top-level-typo",
        "nested-typo",
        "agent-flag-typo",
        "port-string",
        "bool-string",
        "auth-mode",
        "floor",
        "digest",
    ],
)
def test_the_schema_refuses_a_typo_or_a_wrong_type(values: dict[str, str], message: str) -> None:
    result = helm("template", "khan", str(CHART), *value_flags(values))
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


def test_the_schema_closes_every_object_of_the_charts_own() -> None:
    """additionalProperties: false wherever the chart lists the keys; open maps say what their values are."""
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: dict[str, Any], where: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, where
            for key, child in node["properties"].items():
                if key != "monitoring" or where:  # the rules generator's subtree
                    walk(child, f"{where}/{key}")

    walk(schema, "")


def test_every_value_is_in_the_schema_and_every_schema_key_has_a_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def keys(values_node: Any, schema_node: dict[str, Any], where: str) -> None:
        if not (isinstance(values_node, dict) and "properties" in schema_node):
            return
        assert set(values_node) == set(schema_node["properties"]), where
        for key, value in values_node.items():
            if where or key != "monitoring":
                keys(value, schema_node["properties"][key], f"{where}/{key}")

    keys(values, schema, "")


def test_the_defaults_make_deploys_objects() -> None:
    """`helm install khan deploy/helm/khan -n khan` and `kubectl apply -k deploy/` make the same objects, but the
    Namespace (a chart does not create it) and the labels that say who installed them."""
    assert by_identity(rendered()) == by_identity(kustomized(DEPLOY), skip_kinds=("Namespace",))


def test_with_the_pod_monitor_and_the_rule_on_it_makes_the_operator_kustomizations_objects() -> None:
    rule_template_generated()
    values = {"podMonitor.enabled": "true", "prometheusRule.enabled": "true"}
    assert by_identity(rendered(values)) == by_identity(kustomized(OPERATOR), skip_kinds=("Namespace",))


def test_every_object_is_labelled_as_the_charts() -> None:
    for obj in rendered(EVERYTHING):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == labels["app.kubernetes.io/part-of"] == "khan", obj["kind"]
        assert labels["app.kubernetes.io/instance"] == "khan"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "khan-0.1.0"


def test_the_installer_labels_are_the_only_ones_removed() -> None:
    labelled = {"metadata": {"labels": {"helm.sh/chart": "x", "app.kubernetes.io/managed-by": "Helm", "a": "b"}}}
    nested = {"spec": {"template": labelled, "list": [labelled]}}
    assert without_installer_labels(labelled) == {"metadata": {"labels": {"a": "b"}}}
    assert without_installer_labels(nested) == {
        "spec": {"template": {"metadata": {"labels": {"a": "b"}}}, "list": [{"metadata": {"labels": {"a": "b"}}}]}
    }
    assert INSTALLER_LABELS == ("helm.sh/chart", "app.kubernetes.io/managed-by")


def test_every_agent_value_becomes_its_flag() -> None:
    args = container(rendered(EVERYTHING))["args"]
    assert args[:3] == ["agent", "--auth=kubernetes", "--web-config-file=/etc/khan/web/web.yml"]
    assert "--listen=:9987" in args
    for flag in (
        "--interval=15",
        "--max-series=20000",
        "--aggregate=workload",
        "--external-cidrs=corp=10.0.0.0/8",
        "--external-ips=drop",
        "--events=on",
        "--event-buffer=67108864",  # a whole number, not 6.7108864e+07
        "--idle-after=1200",
        "--counter-ttl=600",
        "--deleted-pod-grace=60",
        "--watch-timeout=240",
        "--enable-accounting",
        "--web-max-requests=20",
        "--web-max-connections=128",
        "--web-header-timeout=2.5",
        "--log-level=debug",
    ):
        assert flag in args
    assert args[-1] == "--log-format=json"  # extraArgs last, so they can override


def test_the_agent_flags_are_flags_the_agent_takes() -> None:
    flags = {option.flag for option in options_of(AGENT)}
    values = json.loads(EVERYTHING["agent"])
    taken = {arg.split("=", 1)[0] for arg in container(rendered({"agent": json.dumps(values)}))["args"][1:]}
    assert taken <= flags, taken - flags
    assert len(taken) == len(values) + 2  # every agent key, with --auth and --tls-self-signed


def test_a_digest_pins_the_image() -> None:
    assert container(rendered(EVERYTHING))["image"] == f"registry.example/khan@{DIGEST}"
    assert container(rendered())["image"] == "khan:0.1.0"  # the appVersion


def test_tls_from_a_secret_mounts_it_with_a_web_configuration() -> None:
    objects = rendered(EVERYTHING)
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "khan-tls"
    config_maps = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ConfigMap"}
    web = yaml.safe_load(config_maps[volumes["web-config"]["configMap"]["name"]]["data"]["web.yml"])
    assert web == {
        "tls_server_config": {
            "cert_file": "/etc/khan/tls/tls.crt",
            "key_file": "/etc/khan/tls/tls.key",
            "min_version": "TLS13",
        }
    }
    assert {mount["mountPath"] for mount in container(objects)["volumeMounts"]} == {"/etc/khan/tls", "/etc/khan/web"}
    service_monitor = one(rendered(EVERYTHING_BY_SERVICE), "ServiceMonitor")
    assert service_monitor["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"]["name"] == "khan-tls"


def test_tls_from_a_secret_needs_its_name() -> None:
    result = helm("template", "khan", str(CHART), *value_flags({"web.tls.mode": '"secret"'}))
    assert result.returncode != 0
    assert "web.tls.secretName" in result.stderr


def test_the_monitors_scrape_with_the_scraper_token_and_the_release_label() -> None:
    rule_template_generated()
    for values, kind, endpoints in (
        (EVERYTHING_BY_SERVICE, "ServiceMonitor", "endpoints"),
        (EVERYTHING, "PodMonitor", "podMetricsEndpoints"),
    ):
        objects = rendered(values)
        secret = one(objects, "Secret")
        assert secret["type"] == "kubernetes.io/service-account-token"
        scraper = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
        monitor = one(objects, kind)
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"][endpoints]
        assert endpoint["scheme"] == "https"
        assert endpoint["authorization"]["credentials"] == {"name": secret["metadata"]["name"], "key": "token"}
        assert endpoint["relabelings"][0] == {"targetLabel": "job", "replacement": "khan"}
    assert one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["scrapeTimeout"] == "10s"
    bindings = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ClusterRoleBinding"}
    assert bindings[scraper]["roleRef"]["name"] == "khan-metrics-reader"
    assert bindings[scraper]["subjects"] == [{"kind": "ServiceAccount", "name": scraper, "namespace": "khan"}]
    assert one(objects, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_service_monitor_selects_the_services_labels() -> None:
    objects = rendered(EVERYTHING_BY_SERVICE)
    service = one(objects, "Service")
    selector = one(objects, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 9987


def test_without_auth_or_tls_the_monitors_scrape_plain_http_without_a_token() -> None:
    objects = rendered(OPEN)
    assert container(objects)["args"] == ["agent", "--auth=none"]
    assert container(objects)["livenessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert not [obj for obj in objects if obj["kind"] == "Secret" or obj["metadata"]["name"] == "khan-scraper"]
    (endpoint,) = one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert endpoint["scheme"] == "http"
    assert "authorization" not in endpoint
    assert "tlsConfig" not in endpoint


def test_an_existing_account_and_no_rbac() -> None:
    objects = rendered(BYO)
    assert {obj["kind"] for obj in objects} <= {"DaemonSet", "Service", "ConfigMap"}
    assert one(objects, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "node-agents"


def test_both_monitors_at_once_are_refused() -> None:
    # Every agent would be scraped twice: the rules' joins on instance would meet two copies of each series.
    result = helm(
        "template", "khan", str(CHART), "--set", "podMonitor.enabled=true", "--set", "serviceMonitor.enabled=true"
    )
    assert result.returncode != 0
    assert "enable one" in result.stderr


def test_a_monitor_without_the_charts_rbac_binds_no_role_the_chart_did_not_make() -> None:
    objects = rendered({**BYO, "podMonitor.enabled": "true"})
    assert not [obj for obj in objects if obj["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert (
        one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["authorization"]["credentials"]["key"] == "token"
    )


def test_without_auth_the_agent_may_not_review_tokens() -> None:
    (role,) = [obj for obj in rendered(OPEN) if obj["kind"] == "ClusterRole" and obj["metadata"]["name"] == "khan"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "services", "nodes"], "verbs": ["get", "list", "watch"]}
    ]


def test_another_release_and_namespace_name_every_object_after_them() -> None:
    objects = rendered({"podMonitor.enabled": "true"}, release="netmap", namespace="observability")
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in objects if obj["kind"] != "ConfigMap"}
    assert ("DaemonSet", "netmap-khan") in names
    assert ("ClusterRole", "netmap-khan-metrics-reader") in names
    assert ("Secret", "netmap-khan-scraper-token") in names
    assert {obj["metadata"].get("namespace", "observability") for obj in objects} == {"observability"}
    binding = next(obj for obj in objects if obj["metadata"]["name"] == "netmap-khan-scraper" and "roleRef" in obj)
    assert binding["subjects"][0]["namespace"] == "observability"


def test_the_dashboards_are_configmaps_with_the_configurations_job_and_cluster_label(tmp_path: Path) -> None:
    """From the chart's dashboards/*.json, tokens replaced: a copy of the chart with one dashboard of its own."""
    chart = tmp_path / "khan"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("dashboards"))
    (chart / "dashboards").mkdir()
    dashboard = {"uid": "khan-test", "expr": 'sum by (__KHAN_CLUSTER_LABEL__) (up{job="__KHAN_JOB__"})'}
    (chart / "dashboards" / "khan-test.json").write_text(json.dumps(dashboard, indent=2) + "\n")
    values = {"monitoring.job": '"netmap"', "monitoring.clusterLabel": '"k8s_cluster"'}
    result = helm("template", "khan", str(chart), "-n", "khan", *value_flags(values))
    assert result.returncode == 0, result.stderr
    (config_map,) = [obj for obj in yaml.safe_load_all(result.stdout) if obj and obj["kind"] == "ConfigMap"]
    assert config_map["metadata"]["name"] == "khan-test"
    assert config_map["metadata"]["namespace"] == "khan"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["labels"]["app.kubernetes.io/name"] == "khan"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "khan"}
    text = config_map["data"]["khan-test.json"]
    assert json.loads(text)["expr"] == 'sum by (k8s_cluster) (up{job="netmap"})'
    assert (
        text
        == json.dumps(dashboard, indent=2)
        .replace("__KHAN_CLUSTER_LABEL__", "k8s_cluster")
        .replace("__KHAN_JOB__", "netmap")
        + "\n"
    )
    off = helm("template", "khan", str(chart), *value_flags({"dashboards.enabled": "false"}))
    assert "kind: ConfigMap" not in off.stdout
