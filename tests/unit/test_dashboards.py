"""dashboards/: the committed outputs (the JSON, dashboards/kustomization.yaml, the chart's token copies) are what
`python -m dashboards.generate` builds from the one configuration; every panel query (template variables filled
in) parses as PromQL for Prometheus 2.42 (promtool, the same version), selects the configured job, uses the
configured cluster label and names only series khan or Prometheus itself exports; every dashboard has its uid,
tags and the data source, cluster, node and namespace variables; kustomize ships each as a ConfigMap for
Grafana's sidecar, byte for byte."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from alerts import config
from dashboards import generate
from khan.metrics import families
from tests.support import kube_cluster, paths, tools

DASHBOARDS = paths.REPO / "dashboards"
CHART_DASHBOARDS = paths.REPO / "deploy" / "helm" / "khan" / "dashboards"
BOARDS = sorted(DASHBOARDS.glob("*.json"))
UIDS = ["khan-overview", "khan-service-map", "khan-leak", "khan-server-overload", "khan-conntrack-table", "khan-health"]
FILLED = {
    "$__rate_interval": "1m",
    "$cluster": ".*",
    "$node": ".*",
    "$namespace": ".*",
    "$source": ".*",
    "$destination": ".*",
}
# Exposed names: counters keep _total, the info family gets _info; `up` is Prometheus's own.
KNOWN = {spec.name + ("_info" if spec.kind == "info" else "") for spec in families.ALL} | {"up"}
DEFAULT = config.load()
OTHER_VALUES = {"monitoring": {"job": "kube-khan", "clusterLabel": "k8s_cluster"}}


def queries(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def variable_queries(board: dict[str, Any]) -> list[str]:
    return [variable["query"] for variable in board["templating"]["list"] if variable["type"] == "query"]


def filled(expr: str) -> str:
    for variable, value in FILLED.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr.replace("$1", ""), expr
    return expr


def selectors(expr: str) -> list[str]:
    """The label matchers of each `{...}` in a query or a label_values(...) variable."""
    return re.findall(r"\{([^{}]*)\}", expr)


def other_outputs(tmp_path: Path) -> dict[Path, str]:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(OTHER_VALUES))
    return generate.outputs(config.load(values))


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dashboards.generate", *args]
    return subprocess.run(argv, cwd=paths.REPO, capture_output=True, text=True, timeout=120)


def promtool_parses(exprs: list[str], tmp_path: Path) -> None:
    rules = [{"record": f"khan_dashboard:query{index}", "expr": filled(expr)} for index, expr in enumerate(exprs)]
    rule_file = tmp_path / "queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    promtool = tools.require_tool("promtool", "prometheus")
    done = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize`, by the kubectl make installs (1.35) or else the one on PATH (kustomize 4 or newer
    needed: directories outside the root as resources)."""
    installed = kube_cluster.CACHE / "tools" / "bin" / "kubectl"
    kubectl = (
        str(installed) if installed.is_file() else tools.require_tool("kubectl", "kubectl (make test installs it)")
    )
    built = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def test_the_committed_outputs_are_what_the_generator_builds() -> None:
    done = run_generator("--check")
    assert done.returncode == 0, done.stderr
    assert [path.stem for path in BOARDS] == sorted(UIDS)
    assert sorted(path.stem for path in CHART_DASHBOARDS.glob("*.json")) == sorted(UIDS)
    as_a_file = subprocess.run(
        [sys.executable, str(DASHBOARDS / "generate.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert as_a_file.returncode == 0, as_a_file.stderr


def test_check_with_other_values_reports_every_output_stale_and_writes_nothing(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(OTHER_VALUES))
    before = {path: path.read_bytes() for path in [*BOARDS, *CHART_DASHBOARDS.glob("*.json")]}
    done = run_generator("--check", "--values", str(values))
    assert done.returncode == 1
    assert all(f"dashboards/{uid}.json" in done.stderr for uid in UIDS), done.stderr
    assert "deploy/helm/khan/dashboards" not in done.stderr  # the token copies do not depend on job or label
    assert {path: path.read_bytes() for path in before} == before


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    exprs = [expr for path in BOARDS for expr in queries(json.loads(path.read_text()))]
    assert len(exprs) > 40
    # label_values(selector, label) is Grafana's; the selector in it is PromQL.
    exprs += [
        re.sub(r"^label_values\((.*), \w+\)$", r"\1", query)
        for path in BOARDS
        for query in variable_queries(json.loads(path.read_text()))
    ]
    promtool_parses(exprs, tmp_path)


def test_every_query_of_another_configuration_parses_as_promql(tmp_path: Path) -> None:
    boards = [
        json.loads(text)
        for path, text in other_outputs(tmp_path).items()
        if path.parent == DASHBOARDS and path.suffix == ".json"
    ]
    promtool_parses([expr for board in boards for expr in queries(board)], tmp_path)


@pytest.mark.parametrize("path", BOARDS, ids=lambda path: path.stem)
def test_queries_name_only_khans_series(path: Path) -> None:
    board = json.loads(path.read_text())
    for expr in queries(board):
        selected = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr)) - {"by", "without"}
        selected |= set("|".join(re.findall(r'__name__=~"([^"]+)"', expr)).split("|")) - {""}
        assert selected, expr
        assert selected <= KNOWN, (expr, selected - KNOWN)


@pytest.mark.parametrize("path", BOARDS, ids=lambda path: path.stem)
def test_every_dashboard_has_its_uid_tags_and_the_common_variables(path: Path) -> None:
    board = json.loads(path.read_text())
    variables = board["templating"]["list"]
    assert [variable["name"] for variable in variables][:4] == ["datasource", "cluster", "node", "namespace"]
    assert variables[0]["type"] == "datasource"
    assert variables[0]["query"] == "prometheus"
    assert board["uid"] == path.stem
    assert board["tags"][:2] == ["khan", "conntrack"]
    assert len(board["tags"]) == 3
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in board["panels"])
    assert all(variable["datasource"]["uid"] == "${datasource}" for variable in variables[1:])
    targets = [target for panel in board["panels"] for target in panel["targets"]]
    assert all(target["datasource"]["uid"] == "${datasource}" for target in targets)


def test_each_dashboard_has_a_topic_of_its_own() -> None:
    topics = [json.loads(path.read_text())["tags"][2] for path in BOARDS]
    assert len(set(topics)) == len(topics), topics


@pytest.mark.parametrize("path", BOARDS, ids=lambda path: path.stem)
def test_every_query_selects_the_configured_job_and_cluster_label(path: Path) -> None:
    board = json.loads(path.read_text())
    for expr in queries(board) + variable_queries(board):
        assert all(f'job="{DEFAULT.job}"' in matchers for matchers in selectors(expr)), expr
    (cluster,) = [variable for variable in board["templating"]["list"] if variable["name"] == "cluster"]
    assert cluster["query"] == f'label_values(khan_build_info{{job="{DEFAULT.job}"}}, {DEFAULT.cluster_label})'


@pytest.mark.parametrize("path", BOARDS, ids=lambda path: path.stem)
def test_every_aggregation_keeps_the_cluster_label(path: Path) -> None:
    """With several clusters chosen, no panel adds one cluster's series to another's. The service map's node graph
    is the exception: its node and edge ids must be unique, so it sums one graph over the clusters chosen."""
    for expr in queries(json.loads(path.read_text())):
        for labels in re.findall(r"\b(?:by|on) \(([^)]*)\)", expr):
            node_graph = "label_join" in expr and labels.strip() in ("id", "id, source, target")
            assert node_graph or DEFAULT.cluster_label in labels.replace(" ", "").split(","), expr


def test_another_configuration_reaches_every_query_and_leaves_no_default(tmp_path: Path) -> None:
    written = [path for path in other_outputs(tmp_path) if path.suffix == ".json"]
    assert len(written) == 2 * len(UIDS)  # the dashboards and the chart's copies (JSON once their tokens are filled)
    boards = {
        path: json.loads(text)
        for path, text in other_outputs(tmp_path).items()
        if path.parent == DASHBOARDS and path.suffix == ".json"
    }
    for path, board in boards.items():
        exprs = queries(board) + variable_queries(board)
        for expr in exprs:
            assert selectors(expr), expr
            assert all('job="kube-khan"' in matchers for matchers in selectors(expr)), expr
            assert 'job="khan"' not in expr, expr
            assert not re.search(r"\bcluster\b", expr.replace("$cluster", "").replace("k8s_cluster", "")), expr
        assert any('k8s_cluster=~"$cluster"' in expr for expr in exprs), path
        assert 'label_values(khan_build_info{job="kube-khan"}, k8s_cluster)' in exprs, path


@pytest.mark.parametrize("uid", UIDS)
def test_the_chart_copy_is_the_dashboard_with_tokens(uid: str, tmp_path: Path) -> None:
    copy = (CHART_DASHBOARDS / f"{uid}.json").read_text()
    assert generate.JOB_TOKEN in copy
    assert generate.CLUSTER_LABEL_TOKEN in copy
    assert f'job=\\"{DEFAULT.job}\\"' not in copy

    def rendered(job: str, cluster_label: str) -> str:
        filled = copy.replace(generate.JOB_TOKEN, job).replace(generate.CLUSTER_LABEL_TOKEN, cluster_label)
        for token, key in (
            ("__KHAN_TABLE_FILLING_SHARE__", "conntrackTableFillingShare"),
            ("__KHAN_TABLE_FULL_SHARE__", "conntrackTableFullShare"),
        ):
            filled = filled.replace(token, str(DEFAULT.thresholds[key]))
        return filled

    # What the chart makes with the default values is the committed dashboard, byte for byte ...
    assert rendered(DEFAULT.job, DEFAULT.cluster_label) == (DASHBOARDS / f"{uid}.json").read_text()
    # ... and with other values, what the generator makes from them.
    other = other_outputs(tmp_path)[DASHBOARDS / f"{uid}.json"]
    assert rendered("kube-khan", "k8s_cluster") == other


@pytest.mark.parametrize(
    "directory", ["dashboards", "deploy", "deploy/prometheus-operator"], ids=lambda directory: directory
)
def test_kustomize_ships_each_dashboard_as_a_configmap_for_grafanas_sidecar(directory: str) -> None:
    configmaps = [obj for obj in kubectl_kustomize(paths.REPO / directory) if obj["kind"] == "ConfigMap"]
    assert sorted(configmap["metadata"]["name"] for configmap in configmaps) == sorted(UIDS)
    for configmap in configmaps:
        uid = configmap["metadata"]["name"]
        assert configmap["metadata"]["namespace"] == "khan"
        assert configmap["metadata"]["labels"] == {**config.kustomize_labels(), "grafana_dashboard": "1"}
        assert configmap["metadata"]["annotations"] == {"grafana_folder": "khan"}
        assert configmap["data"] == {f"{uid}.json": (DASHBOARDS / f"{uid}.json").read_text()}


def panel_query(uid: str, title: str, ref: str = "A") -> str:
    board = json.loads((DASHBOARDS / f"{uid}.json").read_text())
    (panel,) = [panel for panel in board["panels"] if panel["title"] == title]
    (expr,) = [target["expr"] for target in panel["targets"] if target["refId"] == ref]
    return filled(expr)


def test_the_table_panels_count_every_entry_of_a_node_and_the_limit_panel_counts_once(tmp_path: Path) -> None:
    """Two nodes' agents: node-a's table is 80% full, 50% of it one client's unreplied DNS queries; a connection
    between the nodes is in both tables (seen from source on node-b, destination on node-a)."""
    a, b = 'job="khan", instance="10.0.0.1:9100"', 'job="khan", instance="10.0.0.2:9100"'
    hog = 'src_type="pod", src_ns="shop", src_app="hammer", src_name="hammer"'
    dns = 'dst_type="service", dst_ns="kube-system", dst_name="kube-dns", dst_port="53", transport="udp"'
    web = 'dst_type="service", dst_ns="shop", dst_name="web", dst_port="80", transport="tcp", state="ESTABLISHED"'
    outside = 'src_type="external", src_name="internet"'  # empty labels are absent in Prometheus
    api = 'src_type="pod", src_ns="shop", src_app="api", src_name="api"'
    series = {
        f"khan_conntrack_table_entries{{{a}}}": 800,
        f"khan_conntrack_table_limit{{{a}}}": 1000,
        f"khan_conntrack_table_entries{{{b}}}": 100,
        f"khan_conntrack_table_limit{{{b}}}": 1000,
        f'khan_connection{{{a}, node="node-a", {hog}, {dns}, state="UNREPLIED", seen_from="source"}}': 500,
        f'khan_connection{{{a}, node="node-a", {outside}, {web}, seen_from="ingress"}}': 200,
        f'khan_connection{{{a}, node="node-a", {api}, {web}, seen_from="destination"}}': 50,
        f'khan_connection{{{b}, node="node-b", {api}, {web}, seen_from="source"}}': 50,
        f'khan_connection_limit{{{a}, dst_type="service", dst_ns="shop", dst_name="web"}}': 400,
        f'khan_connection_limit{{{b}, dst_type="service", dst_ns="shop", dst_name="web"}}': 400,
    }
    inputs = [{"series": name, "values": f"{value}x10"} for name, value in series.items()]
    inputs += [  # one early drop a second on node-a; counters the panel leaves out
        {"series": f'khan_conntrack_table_events_total{{{a}, event="early_drop"}}', "values": "0+60x10"},
        {"series": f'khan_conntrack_table_events_total{{{a}, event="searched"}}', "values": "0+6000x10"},
    ]
    table = "khan-conntrack-table"
    expected = {
        panel_query(table, "Table fill per node"): [
            (f'{{{a}, node="node-a"}}', 0.8),
            (f'{{{b}, node="node-b"}}', 0.1),
        ],
        panel_query(table, "Who fills it now"): [
            (f'{{instance="10.0.0.1:9100", node="node-a", {hog}}}', 0.5),
            (f'{{instance="10.0.0.1:9100", node="node-a", {outside}}}', 0.2),
            (f'{{instance="10.0.0.1:9100", node="node-a", {api}}}', 0.05),
            (f'{{instance="10.0.0.2:9100", node="node-b", {api}}}', 0.05),
        ],
        panel_query(table, "Kernel drops, early drops and failed inserts per second"): [
            (f'{{{a}, node="node-a", event="early_drop"}}', 1.0),
        ],
        panel_query(table, "DNS queries left unreplied, by client (top 10)"): [(f"{{{hog}}}", 500)],
        panel_query("khan-server-overload", "Share of the declared limit in use"): [
            ('{dst_type="service", dst_ns="shop", dst_name="web"}', 250 / 400),  # ingress + source, once
        ],
        panel_query("khan-server-overload", "Inbound connections against declared limits", "B"): [
            ('{dst_type="service", dst_ns="shop", dst_name="web"}', 400),
        ],
    }
    tests = [
        {
            "expr": expr,
            "eval_time": "5m",
            "exp_samples": [{"labels": labels, "value": value} for labels, value in samples],
        }
        for expr, samples in expected.items()
    ]
    (tmp_path / "none.yml").write_text("groups: []\n")
    (tmp_path / "test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["none.yml"],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": inputs, "promql_expr_test": tests}],
            }
        )
    )
    promtool = tools.require_tool("promtool", "prometheus")
    done = subprocess.run([promtool, "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_table_fill_panel_draws_the_configured_alert_shares() -> None:
    # A configuration with the table's thresholds, as alerts/config.py gives them (monitoring.thresholds).
    configured = SimpleNamespace(
        job="khan",
        cluster_label="cluster",
        thresholds={"conntrackTableFillingShare": 0.6, "conntrackTableFullShare": 0.8},
    )
    board = json.loads(generate.outputs(configured)[DASHBOARDS / "khan-conntrack-table.json"])  # type: ignore[arg-type]
    (fill,) = [panel for panel in board["panels"] if panel["title"] == "Table fill per node"]
    steps = fill["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [step["value"] for step in steps] == [None, 0.6, 0.8]
    assert fill["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "dashed"}
    default = json.loads((DASHBOARDS / "khan-conntrack-table.json").read_text())
    (fill,) = [panel for panel in default["panels"] if panel["title"] == "Table fill per node"]
    assert [step["value"] for step in fill["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.75, 0.9]


def test_the_chart_draws_the_shares_its_values_configure(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    shares = {"conntrackTableFillingShare": 0.6, "conntrackTableFullShare": 0.85}
    values.write_text(yaml.safe_dump({"monitoring": {"thresholds": shares}}))
    done = subprocess.run(
        [tools.require_kube_tool("helm"), "template", "khan", str(CHART_DASHBOARDS.parent), "-f", str(values),
         "--show-only", "templates/dashboards.yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (configmap,) = [obj for obj in yaml.safe_load_all(done.stdout) if obj["metadata"]["name"] == "khan-conntrack-table"]
    board = json.loads(configmap["data"]["khan-conntrack-table.json"])
    (fill,) = [panel for panel in board["panels"] if panel["title"] == "Table fill per node"]
    assert [step["value"] for step in fill["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.6, 0.85]
