"""khan's Grafana dashboards, built with grafana-foundation-sdk and written as JSON next to this file.

    .venv/bin/python dashboards/generate.py          # rewrite the JSON files
    .venv/bin/python dashboards/generate.py --check  # exit 1 if a committed file differs (the tests do this)

Every connection panel counts each connection once across nodes (seen_from=~"source|ingress"), and every query
uses only series khan (or Prometheus itself: `up`) exports.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, nodegraph, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).parent
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Every series of one cluster and the chosen nodes; the cluster label is optional (absent matches ".*").
SCOPE = 'cluster=~"$cluster", node=~"$node"'
ONCE = f'{SCOPE}, seen_from=~"source|ingress"'
RATE = "$__rate_interval"

Panel = Any  # a panel builder of any type


def query(expr: str, legend: str = "", instant: bool = False, ref: str = "A") -> prometheus.Dataquery:
    built = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    if legend:
        built = built.legend_format(legend)
    if instant:
        built = built.instant().format(PromQueryFormat.TABLE)
    return built


def graph(title: str, expr: str, legend: str, unit: str = "short", description: str = "") -> Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .min(0)
        .datasource(DATASOURCE)
        .with_target(query(expr, legend))
    )


def top(title: str, expr: str, description: str = "") -> Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, instant=True))
    )


def single(title: str, expr: str, unit: str = "short") -> Panel:
    return stat.Panel().title(title).unit(unit).datasource(DATASOURCE).with_target(query(expr, instant=True))


def variables(extra: tuple[tuple[str, str], ...] = ()) -> Iterator[Any]:
    yield dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    for name, source in (
        ("cluster", "label_values(khan_build_info, cluster)"),
        ("node", 'label_values(khan_connection{cluster=~"$cluster"}, node)'),
        ("namespace", 'label_values(khan_connection{cluster=~"$cluster"}, dst_ns)'),
        *extra,
    ):
        yield (
            dashboard.QueryVariable(name)
            .label(name.replace("_", " ").capitalize())
            .datasource(DATASOURCE)
            .query(source)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .include_all(True)
            .all_value(".*")
            .multi(True)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )


def board(uid: str, title: str, description: str, panels: list[Panel], extra: tuple[tuple[str, str], ...] = ()) -> Any:
    built = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["khan", "conntrack"])
        .time("now-6h", "now")
        .refresh("1m")
        .editable()
    )
    for variable in variables(extra):
        built = built.with_variable(variable)
    for index, panel in enumerate(panels):  # two panels a row, each 12 wide and 8 high
        built = built.with_panel(panel.grid_pos(model.GridPos(h=8, w=12, x=12 * (index % 2), y=8 * (index // 2))))
    return built


NS = 'dst_ns=~"$namespace"'


def overview() -> Any:
    return board(
        "khan-overview",
        "khan / Connections overview",
        "What talks to what, right now and over time, counted once across nodes.",
        [
            graph("Connections by type pair", f"sum by (src_type, dst_type) (khan_connection{{{ONCE}, {NS}}})",
                  "{{src_type}} -> {{dst_type}}"),
            top("Top source -> destination pairs",
                f"topk(20, sum by (src_ns, src_name, dst_ns, dst_name, dst_port) (khan_connection{{{ONCE}, {NS}}}))"),
            graph("Connections by state (SYN_SENT and SYN_RECV: half-open)",
                  f"sum by (state) (khan_connection{{{ONCE}, {NS}}})", "{{state}}"),
            graph("New connections per second", f"sum by (src_type, dst_type) "
                  f"(rate(khan_connections_opened_total{{{ONCE}, {NS}}}[{RATE}]))", "{{src_type}} -> {{dst_type}}",
                  "cps"),
            graph("Bytes per second", f"sum by (direction) (rate(khan_flow_bytes_total{{{ONCE}, {NS}}}[{RATE}]))",
                  "{{direction}}", "Bps"),
            graph("Connections per node (as each node's table holds them)",
                  f"sum by (node) (khan_connection{{{SCOPE}, {NS}}})", "{{node}}"),
        ],
    )  # fmt: skip


def service_map() -> Any:
    pairs = f"khan_connection{{{ONCE}, {NS}}}"
    source = f'label_join({pairs}, "source", "/", "src_ns", "src_name")'
    both = f'label_join({source}, "target", "/", "dst_ns", "dst_name")'
    edges = f'sum by (id, source, target) (label_join({both}, "id", " -> ", "source", "target"))'
    nodes = (
        f'sum by (id) (label_join({pairs}, "id", "/", "dst_ns", "dst_name"))'
        f' or sum by (id) (label_join({pairs}, "id", "/", "src_ns", "src_name"))'
    )
    graph_panel = (
        nodegraph.Panel()
        .title("Service map: workloads and services, edges weighted by connections")
        .datasource(DATASOURCE)
        .with_target(query(nodes, instant=True, ref="nodes"))
        .with_target(query(edges, instant=True, ref="edges"))
        .with_transformation(
            model.DataTransformerConfig(id_val="organize", options={"renameByName": {"Value": "mainstat"}})
        )
    )
    return board(
        "khan-service-map",
        "khan / Service map",
        "Who talks to whom: a node graph of pods (or workloads, with --aggregate workload), services, nodes and "
        "outside addresses, with edges weighted by connections; bytes where accounting is on.",
        [
            graph_panel,
            top("Edges: connections", f"sum by (src_ns, src_name, dst_ns, dst_name) ({pairs})"),
            top("Edges: bytes per second",
                f"sum by (src_ns, src_name, dst_ns, dst_name) (rate(khan_flow_bytes_total{{{ONCE}, {NS}}}[{RATE}]))"),
        ],
    )  # fmt: skip


def leak() -> Any:
    chosen = f'{ONCE}, src_name=~"$source", dst_name=~"$destination"'
    return board(
        "khan-leak",
        "khan / Connection leak investigation",
        "For a chosen source or destination: connections over time by peer, their growth, and the states that "
        "pile up when a side never closes.",
        [
            graph("Connections by peer", f"sum by (src_name, dst_ns, dst_name) (khan_connection{{{chosen}}})",
                  "{{src_name}} -> {{dst_ns}}/{{dst_name}}"),
            graph("Growth over the last hour", f"sum by (src_name, dst_ns, dst_name) (khan_connection{{{chosen}}})"
                  f" - sum by (src_name, dst_ns, dst_name) (khan_connection{{{chosen}}} offset 1h)",
                  "{{src_name}} -> {{dst_ns}}/{{dst_name}}"),
            graph("TIME_WAIT, CLOSE_WAIT and other closing states", f"sum by (state) "
                  f'(khan_connection{{{chosen}, state=~"TIME_WAIT|CLOSE_WAIT|FIN_WAIT|LAST_ACK|CLOSE"}})', "{{state}}"),
            graph("New connections per second", f"sum by (src_name, dst_name) "
                  f"(rate(khan_connections_opened_total{{{chosen}}}[{RATE}]))", "{{src_name}} -> {{dst_name}}", "cps"),
            top("Peers now", f"sort_desc(sum by (src_type, src_ns, src_name, dst_type, dst_ns, dst_name, state) "
                f"(khan_connection{{{chosen}}}))"),
        ],
        extra=(
            ("source", 'label_values(khan_connection{cluster=~"$cluster"}, src_name)'),
            ("destination", 'label_values(khan_connection{cluster=~"$cluster"}, dst_name)'),
        ),
    )  # fmt: skip


def overload() -> Any:
    inbound = f'{ONCE}, dst_name=~"$destination"'
    return board(
        "khan-server-overload",
        "khan / Server overload",
        "For a chosen destination: who connects, who is new or dominant, how a service spreads its load over its "
        "endpoints, and outside clients.",
        [
            graph("Inbound connections by client", f"topk(10, sum by (src_type, src_ns, src_name) "
                  f"(khan_connection{{{inbound}}}))", "{{src_type}} {{src_ns}}/{{src_name}}"),
            top("Clients now against an hour ago",
                f"sum by (src_type, src_ns, src_name) (khan_connection{{{inbound}}}) - "
                f"(sum by (src_type, src_ns, src_name) (khan_connection{{{inbound}}} offset 1h) or "
                f"0 * sum by (src_type, src_ns, src_name) (khan_connection{{{inbound}}}))"),
            graph("Transactions per endpoint (new connections per second)",
                  f'sum by (endpoint_name, endpoint_ip) (rate(khan_service_transactions_total'
                  f'{{{SCOPE}, service_name=~"$destination"}}[{RATE}]))', "{{endpoint_name}} {{endpoint_ip}}", "cps"),
            graph("Outside clients", f'sum by (src_ip, src_name) (khan_connection{{{inbound}, src_type="external"}})',
                  "{{src_name}} {{src_ip}}"),
        ],
        extra=(("destination", 'label_values(khan_connection{cluster=~"$cluster"}, dst_name)'),),
    )  # fmt: skip


def health() -> Any:
    khan = '{job="khan", cluster=~"$cluster"}'
    families = "khan_connection|khan_connections_opened_total|khan_flow_bytes_total|khan_service_transactions_total"
    return board(
        "khan-health",
        "khan / Health",
        "Is khan itself working: agents up, polls against their interval, table fill, API watches, lost events, "
        "series per family.",
        [
            single("Agents up", f"sum(up{khan})"),
            single("Agents expected (scrape targets)", f"count(up{khan})"),
            graph("Poll duration against interval", f"khan_poll_duration_seconds{khan}", "{{instance}} poll", "s"),
            graph("Poll interval", f"khan_poll_interval_seconds{khan}", "{{instance}}", "s"),
            graph("Entries per poll", f"khan_poll_entries{khan}", "{{instance}}"),
            graph("Table fill", f"khan_conntrack_table_entries{khan} / khan_conntrack_table_limit{khan}",
                  "{{instance}}", "percentunit"),
            graph("Skipped (malformed) entries per second", f"rate(khan_entries_malformed_total{khan}[{RATE}])",
                  "{{instance}}"),
            graph("API watch restarts per second", f"sum by (resource, reason) "
                  f"(rate(khan_inventory_watch_starts_total{khan}[{RATE}]))", "{{resource}} {{reason}}"),
            graph("Events lost per second", f"rate(khan_events_dropped_total{khan}[{RATE}])", "{{instance}}"),
            graph("Connections possibly missed per hour (upper bound)",
                  f"increase(khan_connections_possibly_missed_total{khan}[1h])", "{{instance}}",
                  description="Connections that may have opened and closed with both their events lost: counted "
                  "nowhere. Lost events whose connections were recovered or whose entries vanished are not here."),
            graph("Series per family", f'count by (__name__) ({{__name__=~"{families}", {SCOPE}}})', "{{__name__}}"),
            graph("Series folded into overflow", f"khan_series_folded{khan}", "{{instance}} {{family}}"),
        ],
    )  # fmt: skip


BOARDS: dict[str, Callable[[], Any]] = {
    "khan-overview": overview,
    "khan-service-map": service_map,
    "khan-leak": leak,
    "khan-server-overload": overload,
    "khan-health": health,
}


def render(build: Callable[[], Any]) -> str:
    return json.dumps(json.loads(JSONEncoder().encode(build().build())), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for uid, build in BOARDS.items():
        path = HERE / f"{uid}.json"
        text = render(build)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date (run dashboards/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
