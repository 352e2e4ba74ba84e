"""dashboards/: the committed JSON is what generate.py builds; every panel query (template variables filled in)
parses as PromQL for Prometheus 2.42 (promtool, the same version) and names only series khan or Prometheus
itself exports; every dashboard has the data source, cluster, node and namespace variables."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from khan.metrics import families
from tests.support import paths, tools

DASHBOARDS = paths.REPO / "dashboards"
BOARDS = sorted(DASHBOARDS.glob("*.json"))
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


def queries(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def filled(expr: str) -> str:
    for variable, value in FILLED.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr.replace("$1", ""), expr
    return expr


def test_the_committed_json_is_what_the_generator_builds() -> None:
    done = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [path.stem for path in BOARDS] == sorted(
        ["khan-overview", "khan-service-map", "khan-leak", "khan-server-overload", "khan-health"]
    )


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"khan_dashboard:query{index}", "expr": filled(expr)}
        for index, expr in enumerate(expr for path in BOARDS for expr in queries(json.loads(path.read_text())))
    ]
    assert len(rules) > 25
    rule_file = tmp_path / "queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    promtool = tools.require_tool("promtool", "prometheus")
    done = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", BOARDS, ids=lambda path: path.stem)
def test_queries_name_only_khans_series(path: Path) -> None:
    board = json.loads(path.read_text())
    for expr in queries(board):
        selected = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr)) - {"by", "without"}
        selected |= set("|".join(re.findall(r'__name__=~"([^"]+)"', expr)).split("|")) - {""}
        assert selected, expr
        assert selected <= KNOWN, (expr, selected - KNOWN)


@pytest.mark.parametrize("path", BOARDS, ids=lambda path: path.stem)
def test_every_dashboard_has_the_common_variables(path: Path) -> None:
    board = json.loads(path.read_text())
    names = [variable["name"] for variable in board["templating"]["list"]]
    assert names[:4] == ["datasource", "cluster", "node", "namespace"]
    assert board["uid"] == path.stem
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in board["panels"])
