"""The README's metric table is khan/metrics/families.py, row for row: a family added, renamed or reworded there
is a table row to update here (`python -m tests.unit.test_readme_metrics` prints the table)."""

from __future__ import annotations

from khan.metrics import families
from khan.metrics.families import MetricSpec
from tests.support import paths

HEADER = "| name | type | labels | meaning |"


def row(spec: MetricSpec) -> str:
    # An info family is exposed as a gauge named with _info.
    name, kind = (spec.name + "_info", "gauge") if spec.kind == "info" else (spec.name, spec.kind)
    return f"| `{name}` | {kind} | {', '.join(spec.labels)} | {spec.help.replace('|', chr(92) + '|')} |"


def table() -> list[str]:
    return [HEADER, "| --- | --- | --- | --- |", *map(row, families.ALL)]


def readme_table() -> list[str]:
    lines = (paths.REPO / "README.md").read_text().splitlines()
    start = lines.index(HEADER)
    end = next(index for index in range(start, len(lines)) if not lines[index].startswith("|"))
    return lines[start:end]


def test_the_readme_metric_table_is_the_families() -> None:
    assert readme_table() == table()


if __name__ == "__main__":
    print("\n".join(table()))
