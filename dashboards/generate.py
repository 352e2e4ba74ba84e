"""khan's Grafana dashboards, built with grafana-foundation-sdk from the one configuration (the `monitoring`
section of deploy/helm/khan/values.yaml: job and cluster label) and written as JSON, from the repository root:

    python -m dashboards.generate                # rewrite every output
    python -m dashboards.generate --check        # exit 1 if a committed output differs (the tests do this)
    python -m dashboards.generate --values F     # from another values file (keys it leaves out: the defaults)

Outputs: dashboards/<uid>.json (Grafana import, and the ConfigMaps of dashboards/kustomization.yaml, also written
here), and deploy/helm/khan/dashboards/<uid>.json, the same JSON with the tokens __KHAN_JOB__ and
__KHAN_CLUSTER_LABEL__ where the job and the cluster label's name go: the chart puts its values there at install.

Every connection panel counts each connection once across nodes (seen_from=~"source|ingress") unless it counts a
node's table, and every query selects the configured job and uses only series khan (or Prometheus: `up`) exports.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python dashboards/generate.py): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grafana_foundation_sdk.builders import common, dashboard, nodegraph, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from alerts import config as monitoring

HERE = Path(__file__).resolve().parent
CHART_DASHBOARDS = HERE.parent / "deploy" / "helm" / "khan" / "dashboards"
# Where the chart's copies leave the job and the cluster label's name for the chart's values.
JOB_TOKEN = "__KHAN_JOB__"
CLUSTER_LABEL_TOKEN = "__KHAN_CLUSTER_LABEL__"
# ... and the shares at which the table alerts fire (monitoring.thresholds): numbers in the JSON, so the copies are
# built with these stand-ins, which no panel holds otherwise, and each is then written as its token.
SHARE_TOKENS = {
    0.123456789012: "__KHAN_TABLE_FILLING_SHARE__",
    0.987654321098: "__KHAN_TABLE_FULL_SHARE__",
}
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
# The shares of a node's table at which KhanConntrackTableFilling and KhanConntrackTableFull fire, where the
# configuration does not give them (monitoring.thresholds.conntrackTableFillingShare / ...FullShare).
TABLE_WARNING = 0.75
TABLE_CRITICAL = 0.9

Panel = Any  # a panel builder of any type


@dataclass(frozen=True)
class Inputs:
    """What the boards are made from: the configuration's job and cluster label, which make the label matchers
    every query starts from, and the shares of the table at which its alerts fire."""

    job: str
    cluster_label: str  # the label's name; the variable that picks its values is always $cluster
    table_warning: float = TABLE_WARNING
    table_critical: float = TABLE_CRITICAL

    @property
    def khan(self) -> str:
        """khan's series of the chosen clusters; series without the cluster label match (".*" matches absent)."""
        return f'job="{self.job}", {self.cluster_label}=~"$cluster"'

    @property
    def scope(self) -> str:
        """... on the chosen nodes."""
        return f'{self.khan}, node=~"$node"'

    @property
    def once(self) -> str:
        """... each connection counted once across nodes."""
        return f'{self.scope}, seen_from=~"source|ingress"'

    @property
    def nodes(self) -> str:
        """Each agent's node name by instance (the table's series carry no node label), of the chosen nodes."""
        return f"group by ({self.cluster_label}, instance, node) (khan_connection{{{self.scope}}})"

    def on_node(self, expr: str) -> str:
        """A per-agent expression with its node's name added, kept only for the chosen nodes."""
        return f"{expr} * on ({self.cluster_label}, instance) group_left (node) {self.nodes}"

    def by(self, labels: str) -> str:
        """`by (...)` that keeps the cluster label, so that one Prometheus can serve many clusters."""
        return f"by ({self.cluster_label}, {labels})"


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


def with_thresholds(panel: Panel, warning: float, critical: float) -> Panel:
    """Dashed lines at an alert's warning and critical values."""
    steps = [
        model.Threshold(value=None, color="green"),
        model.Threshold(value=warning, color="orange"),
        model.Threshold(value=critical, color="red"),
    ]
    lines = common.GraphThresholdsStyleConfig().mode(common_model.GraphTresholdsStyleMode.DASHED)
    bands = dashboard.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps)
    return panel.thresholds(bands).thresholds_style(lines)


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


def variables(on: Inputs, extra: tuple[tuple[str, str], ...] = ()) -> Iterator[Any]:
    yield dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    for name, source in (
        ("cluster", f'label_values(khan_build_info{{job="{on.job}"}}, {on.cluster_label})'),
        ("node", f"label_values(khan_connection{{{on.khan}}}, node)"),
        ("namespace", f"label_values(khan_connection{{{on.khan}}}, dst_ns)"),
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


def board(
    on: Inputs,
    uid: str,
    title: str,
    description: str,
    topic: str,
    panels: list[Panel],
    extra: tuple[tuple[str, str], ...] = (),
) -> Any:
    built = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["khan", "conntrack", topic])
        .time("now-6h", "now")
        .refresh("1m")
        .editable()
    )
    for variable in variables(on, extra):
        built = built.with_variable(variable)
    for index, panel in enumerate(panels):  # two panels a row, each 12 wide and 8 high
        built = built.with_panel(panel.grid_pos(model.GridPos(h=8, w=12, x=12 * (index % 2), y=8 * (index // 2))))
    return built


NS = 'dst_ns=~"$namespace"'


def overview(on: Inputs) -> Any:
    once = on.once
    return board(
        on,
        "khan-overview",
        "khan / Connections overview",
        "What talks to what, right now and over time, counted once across nodes.",
        "overview",
        [
            graph("Connections by type pair", f"sum {on.by('src_type, dst_type')} (khan_connection{{{once}, {NS}}})",
                  "{{src_type}} -> {{dst_type}}"),
            top("Top source -> destination pairs",
                f"topk(20, sum {on.by('src_ns, src_name, dst_ns, dst_name, dst_port')} "
                f"(khan_connection{{{once}, {NS}}}))"),
            graph("Connections by state (SYN_SENT and SYN_RECV: half-open)",
                  f"sum {on.by('state')} (khan_connection{{{once}, {NS}}})", "{{state}}"),
            graph("New connections per second", f"sum {on.by('src_type, dst_type')} "
                  f"(rate(khan_connections_opened_total{{{once}, {NS}}}[{RATE}]))", "{{src_type}} -> {{dst_type}}",
                  "cps"),
            graph("Bytes per second", f"sum {on.by('direction')} (rate(khan_flow_bytes_total{{{once}, {NS}}}[{RATE}]))",
                  "{{direction}}", "Bps"),
            graph("Connections per node (as each node's table holds them)",
                  f"sum {on.by('node')} (khan_connection{{{on.scope}, {NS}}})", "{{node}}"),
        ],
    )  # fmt: skip


def service_map(on: Inputs) -> Any:
    pairs = f"khan_connection{{{on.once}, {NS}}}"
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
        on,
        "khan-service-map",
        "khan / Service map",
        "Who talks to whom: a node graph of pods (or workloads, with --aggregate workload), services, nodes and "
        "outside addresses, with edges weighted by connections; bytes where accounting is on.",
        "service-map",
        [
            graph_panel,
            top("Edges: connections", f"sum {on.by('src_ns, src_name, dst_ns, dst_name')} ({pairs})"),
            top("Edges: bytes per second", f"sum {on.by('src_ns, src_name, dst_ns, dst_name')} "
                f"(rate(khan_flow_bytes_total{{{on.once}, {NS}}}[{RATE}]))"),
        ],
    )  # fmt: skip


def leak(on: Inputs) -> Any:
    chosen = f'{on.once}, src_name=~"$source", dst_name=~"$destination"'
    pair = on.by("src_name, dst_ns, dst_name")
    return board(
        on,
        "khan-leak",
        "khan / Connection leak investigation",
        "For a chosen source or destination: connections over time by peer, their growth, which of them sit idle "
        "and for how long (a leak's own sign), and the states that pile up when a side never closes.",
        "leak",
        [
            graph("Connections by peer", f"sum {pair} (khan_connection{{{chosen}}})",
                  "{{src_name}} -> {{dst_ns}}/{{dst_name}}"),
            graph("Growth over the last hour", f"sum {pair} (khan_connection{{{chosen}}})"
                  f" - sum {pair} (khan_connection{{{chosen}}} offset 1h)",
                  "{{src_name}} -> {{dst_ns}}/{{dst_name}}"),
            graph("Idle connections by pair", f"sum {pair} (khan_connection_idle{{{chosen}}})",
                  "{{src_name}} -> {{dst_ns}}/{{dst_name}}",
                  description="Connections with no packet either way for the agent's --idle-after (10 minutes by "
                  "default), by the kernel's own timers. A leak's connections turn idle and climb here; a busy "
                  "pool, growing or not, uses its connections and stays near 0. KhanIdleConnectionsPiling fires "
                  "on a climb or when most of a pair's connections are idle."),
            graph("Longest idle time by pair", f"max {pair} (khan_connection_idle_seconds_max{{{chosen}}})",
                  "{{src_name}} -> {{dst_ns}}/{{dst_name}}", "s",
                  description="How long the pair's most silent connection has sent nothing: a line that rises by "
                  "an hour every hour is a connection nobody will use again. Pairs with idle connections only."),
            graph("Share of the pair's connections idle", f"sum {pair} (khan_connection_idle{{{chosen}}})"
                  f" / sum {pair} (khan_connection{{{chosen}}})", "{{src_name}} -> {{dst_ns}}/{{dst_name}}",
                  "percentunit"),
            graph("TIME_WAIT, CLOSE_WAIT and other closing states", f"sum {on.by('state')} "
                  f'(khan_connection{{{chosen}, state=~"TIME_WAIT|CLOSE_WAIT|FIN_WAIT|LAST_ACK|CLOSE"}})', "{{state}}"),
            graph("New connections per second", f"sum {on.by('src_name, dst_name')} "
                  f"(rate(khan_connections_opened_total{{{chosen}}}[{RATE}]))", "{{src_name}} -> {{dst_name}}", "cps"),
            top("Peers now", f"sort_desc(sum {on.by('src_type, src_ns, src_name, dst_type, dst_ns, dst_name, state')} "
                f"(khan_connection{{{chosen}}}))"),
            top("Idle peers now, longest idle first",
                f"sort_desc(max {on.by('src_type, src_ns, src_name, dst_type, dst_ns, dst_name')} "
                f"(khan_connection_idle_seconds_max{{{chosen}}}))",
                "The longest idle time (seconds) of each pair that has idle connections."),
        ],
        extra=(
            ("source", f"label_values(khan_connection{{{on.khan}}}, src_name)"),
            ("destination", f"label_values(khan_connection{{{on.khan}}}, dst_name)"),
        ),
    )  # fmt: skip


def overload(on: Inputs) -> Any:
    inbound = f'{on.once}, dst_name=~"$destination"'
    destination = "dst_type, dst_ns, dst_name"
    # Inbound connections still open (closed ones hold no slot: as KhanConnectionLimitNear counts them) of each
    # destination that declares a limit (khan.io/max-connections), counted once.
    connections = f'sum {on.by(destination)} (khan_connection{{{inbound}, state!~"TIME_WAIT|CLOSE"}})'
    limits = f'max {on.by(destination)} (khan_connection_limit{{{on.khan}, dst_name=~"$destination"}})'
    against_limits = graph(
        "Inbound connections against declared limits", f"{connections} and on ({on.cluster_label}, {destination}) "
        f"{limits}", "{{dst_ns}}/{{dst_name}}",
        description="Destinations whose Service or Pod declares khan.io/max-connections: inbound connections "
        "still open (not TIME_WAIT or CLOSE), counted once across nodes, and the declared limit (dashed). "
        "KhanConnectionLimitNear fires near it.",
    ).with_target(query(limits, "{{dst_ns}}/{{dst_name}} limit", ref="B")).override_by_query(
        "B", [model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})]
    )  # fmt: skip
    return board(
        on,
        "khan-server-overload",
        "khan / Server overload",
        "For a chosen destination: who connects, who is new or dominant, how a service spreads its load over its "
        "endpoints, outside clients, and inbound connections against a declared limit.",
        "overload",
        [
            graph("Inbound connections by client", f"topk(10, sum {on.by('src_type, src_ns, src_name')} "
                  f"(khan_connection{{{inbound}}}))", "{{src_type}} {{src_ns}}/{{src_name}}"),
            top("Clients now against an hour ago",
                f"sum {on.by('src_type, src_ns, src_name')} (khan_connection{{{inbound}}}) - "
                f"(sum {on.by('src_type, src_ns, src_name')} (khan_connection{{{inbound}}} offset 1h) or "
                f"0 * sum {on.by('src_type, src_ns, src_name')} (khan_connection{{{inbound}}}))"),
            graph("Transactions per endpoint (new connections per second)",
                  f'sum {on.by("endpoint_name, endpoint_ip")} (rate(khan_service_transactions_total'
                  f'{{{on.scope}, service_name=~"$destination"}}[{RATE}]))', "{{endpoint_name}} {{endpoint_ip}}",
                  "cps"),
            graph("Outside clients",
                  f'sum {on.by("src_ip, src_name")} (khan_connection{{{inbound}, src_type="external"}})',
                  "{{src_name}} {{src_ip}}"),
            against_limits,
            top("Share of the declared limit in use", f"sort_desc({connections} / {limits})",
                "Inbound connections (counted once) over the destination's khan.io/max-connections."),
        ],
        extra=(("destination", f"label_values(khan_connection{{{on.khan}}}, dst_name)"),),
    )  # fmt: skip


def conntrack_table(on: Inputs) -> Any:
    table_fill = on.on_node(f"khan_conntrack_table_entries{{{on.khan}}} / khan_conntrack_table_limit{{{on.khan}}}")
    # Every entry of a node's table, whichever side it is seen from: what the kernel counts against the limit.
    entries = f"khan_connection{{{on.scope}}}"
    limit = f"on ({on.cluster_label}, instance) group_left () khan_conntrack_table_limit{{{on.khan}}}"
    holders = "instance, node, src_type, src_ns, src_app, src_name"
    share = f"sum {on.by(holders)} ({entries}) / {limit}"
    destinations = f"sum {on.by('instance, node, dst_type, dst_ns, dst_name, dst_port')} ({entries}) / {limit}"
    kernel = on.on_node(
        f'rate(khan_conntrack_table_events_total{{{on.khan}, event=~"drop|early_drop|insert_failed"}}[{RATE}])'
    )
    unreplied = f'khan_connection{{{on.once}, transport="udp", dst_port="53", state="UNREPLIED"}}'
    clients = "src_type, src_ns, src_app, src_name"
    fill = with_thresholds(
        graph("Table fill per node", table_fill, "{{node}}", "percentunit",
              "Entries over nf_conntrack_max on each node. Dashed: the shares at which KhanConntrackTableFilling "
              "(warning) and KhanConntrackTableFull (critical) fire. "
              "A full table drops the packets of new connections (nf_conntrack: table full, dropping packet). "
              "Nodes are named through khan_connection; khan / Health shows every agent's fill by instance."),
        on.table_warning, on.table_critical,
    ).max(1)  # fmt: skip
    return board(
        on,
        "khan-conntrack-table",
        "khan / Conntrack table: who fills it",
        "For nf_conntrack: table full: how full each node's table is, which workloads, pods or outside ranges hold "
        "its entries (every entry of the node, not counted once), what the kernel drops, DNS queries left "
        "unreplied.",
        "table",
        [
            fill,
            graph("Kernel drops, early drops and failed inserts per second", kernel, "{{node}} {{event}}", "ops",
                  "drop: packets dropped because no entry could be made (table full); early_drop: entries evicted "
                  "to make room; insert_failed: entries that lost an insert race (the UDP/DNS race). "
                  "KhanConntrackDrops fires when they rise."),
            graph("Who fills it: share of the node's table by source (top 10)", f"topk(10, {share})",
                  "{{node}}: {{src_type}} {{src_ns}}/{{src_name}}", "percentunit",
                  "Entries of the chosen nodes' tables by source (workload, pod or outside range), every entry "
                  "whichever side sees it, over the table's limit: what KhanConntrackTableHog names."),
            top("Who fills it now", f"topk(20, {share})",
                "The sources holding the largest shares of their node's table now (value: share of the limit)."),
            top("What they connect to: share of the node's table by destination", f"topk(20, {destinations})",
                "The destinations (and ports) of the chosen nodes' entries, over the table's limit."),
            graph("Entries by transport and state", f"sum {on.by('node, transport, state')} ({entries})",
                  "{{node}} {{transport}} {{state}}",
                  description="UDP UNREPLIED and TCP TIME_WAIT or SYN_SENT piles are entries no traffic needs."),
            graph("DNS queries left unreplied, by client (top 10)",
                  f"topk(10, sum {on.by(clients)} ({unreplied}))", "{{src_type}} {{src_ns}}/{{src_name}}",
                  description="UDP entries to port 53 with no reply, counted once across nodes: a DNS pod that "
                  "was replaced while entries still point at it, or the conntrack DNS race. KhanDNSUnreplied "
                  "names these clients."),
            top("DNS queries left unreplied now, by client and server",
                f"sort_desc(sum {on.by(clients + ', dst_ip, dst_ns, dst_name')} ({unreplied}))"),
        ],
    )  # fmt: skip


def health(on: Inputs) -> Any:
    khan = f"{{{on.khan}}}"
    families = (
        "khan_connection|khan_connection_idle|khan_connection_idle_seconds_max|khan_connections_opened_total"
        "|khan_flow_bytes_total|khan_service_transactions_total"
    )
    return board(
        on,
        "khan-health",
        "khan / Health",
        "Is khan itself working: agents up, polls against their interval, table fill, API watches, lost events, "
        "series per family.",
        "health",
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
            graph("API watch restarts per second", f"sum {on.by('resource, reason')} "
                  f"(rate(khan_inventory_watch_starts_total{khan}[{RATE}]))", "{{resource}} {{reason}}"),
            graph("Events lost per second", f"rate(khan_events_dropped_total{khan}[{RATE}])", "{{instance}}"),
            graph("Connections possibly missed per hour (upper bound)",
                  f"increase(khan_connections_possibly_missed_total{khan}[1h])", "{{instance}}",
                  description="Connections that may have opened and closed between two polls with their events "
                  "lost: counted nowhere. Lost events whose connections were recovered or whose entries vanished are "
                  "not here."),
            graph("Series per family", f'count {on.by("__name__")} ({{__name__=~"{families}", {on.scope}}})',
                  "{{__name__}}"),
            graph("Series folded into overflow", f"khan_series_folded{khan}", "{{instance}} {{family}}"),
        ],
    )  # fmt: skip


BOARDS: dict[str, Callable[[Inputs], Any]] = {
    "khan-overview": overview,
    "khan-service-map": service_map,
    "khan-leak": leak,
    "khan-server-overload": overload,
    "khan-conntrack-table": conntrack_table,
    "khan-health": health,
}

KUSTOMIZATION_HEAD = """\
# Generated by `python -m dashboards.generate`: one ConfigMap per dashboard (name: its uid, key: <uid>.json) for
# the Grafana sidecar of kube-prometheus-stack, which loads every ConfigMap labelled grafana_dashboard: "1" into
# the folder its grafana_folder annotation names. deploy/ and deploy/prometheus-operator/ include this directory.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: khan
generatorOptions:
  disableNameSuffixHash: true  # a stable name, so that an update replaces the dashboard rather than adding one
  labels:
{labels}    grafana_dashboard: "1"
  annotations:
    grafana_folder: khan
configMapGenerator:
"""


def render(build: Callable[[Inputs], Any], on: Inputs) -> str:
    return json.dumps(json.loads(JSONEncoder().encode(build(on).build())), indent=2, sort_keys=True) + "\n"


def kustomization() -> str:
    labels = "".join(f"    {name}: {json.dumps(value)}\n" for name, value in monitoring.kustomize_labels().items())
    generators = "".join(f"  - name: {uid}\n    files:\n      - {uid}.json\n" for uid in BOARDS)
    return KUSTOMIZATION_HEAD.format(labels=labels) + generators


def outputs(config: monitoring.MonitoringConfig) -> dict[Path, str]:
    """Every file the generator writes, by path, from one configuration."""
    thresholds = getattr(config, "thresholds", None) or {}  # a configuration without thresholds: the defaults
    on = Inputs(
        job=config.job,
        cluster_label=config.cluster_label,
        table_warning=thresholds.get("conntrackTableFillingShare", TABLE_WARNING),
        table_critical=thresholds.get("conntrackTableFullShare", TABLE_CRITICAL),
    )
    warning, critical = SHARE_TOKENS
    tokens = replace(
        on, job=JOB_TOKEN, cluster_label=CLUSTER_LABEL_TOKEN, table_warning=warning, table_critical=critical
    )
    written = {HERE / "kustomization.yaml": kustomization()}
    for uid, build in BOARDS.items():
        written[HERE / f"{uid}.json"] = render(build, on)
        written[CHART_DASHBOARDS / f"{uid}.json"] = with_share_tokens(render(build, tokens))
    return written


def with_share_tokens(text: str) -> str:
    for stand_in, token in SHARE_TOKENS.items():
        text = text.replace(json.dumps(stand_in), token)
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed output differs; write nothing")
    parser.add_argument("--values", type=Path, default=monitoring.DEFAULT_VALUES, help="a Helm values file")
    arguments = parser.parse_args(argv)
    stale = []
    for path, text in outputs(monitoring.load(arguments.values)).items():
        if arguments.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(HERE.parent)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"out of date (run python -m dashboards.generate): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
