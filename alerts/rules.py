"""khan's Prometheus rules as data: the recording rules and alerts, with markers where the configuration goes.

A marker is `[[job]]`, `[[cluster]]` (the cluster label's name), `[[runbook]]`, `[[t:<key>]]` (a threshold) or
`[[for:<key>]]` (a duration), keys of alerts/config.py's THRESHOLDS and DURATIONS. `[[` never occurs in PromQL
or in Prometheus's templates, so alerts/generate.py can replace the markers with the configured values (the
committed files) or with Helm expressions (the chart's template) without parsing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from textwrap import dedent

CLUSTER = "[[cluster]]"
# Each connection counted once in the cluster (see the README's "Counting each connection once").
ONCE = 'seen_from=~"source|ingress"'


def khan(metric: str, matchers: str = "") -> str:
    """A selector of one of khan's series: always scoped to the configured job."""
    return f'{metric}{{job="[[job]]"{", " + matchers if matchers else ""}}}'


def t(key: str) -> str:
    return f"[[t:{key}]]"


def text(block: str) -> str:
    """A multi-line expression or description as written in this file, without its indentation."""
    return dedent(block).strip()


def surge(record: str, floor: str, rise: str) -> str:
    """At least `floor` now, and at least `rise` times an hour ago (or nothing an hour ago)."""
    return text(f"""
        ({record} >= {t(floor)})
        and (
          ({record} >= {t(rise)} * {record} offset 1h)
          or ({record} unless {record} offset 1h)
        )
    """)


@dataclass(frozen=True)
class Record:
    record: str
    expr: str
    comment: str = ""


@dataclass(frozen=True)
class Alert:
    alert: str
    expr: str
    duration: str  # key of config.DURATIONS
    severity: str
    summary: str
    description: str
    comment: str = ""


Rule = Record | Alert


@dataclass(frozen=True)
class Group:
    name: str
    rules: tuple[Rule, ...]
    comment: str = ""


PAIR = f"{CLUSTER}, src_type, src_ip, src_ns, src_name, dst_type, dst_ns, dst_name"
DESTINATION = f"{CLUSTER}, dst_type, dst_ns, dst_name"
SOURCE = "src_type, src_ns, src_app, src_name"
UP = khan("up")
OUTSIDE = khan("khan_connection", ONCE + ', src_type="external"')
HALF_OPEN = khan("khan_connection", ONCE + ', transport="tcp", state=~"SYN_SENT|SYN_SENT2"')
DROPS = khan("khan_conntrack_table_events_total", 'event=~"drop|early_drop|insert_failed"')
# Connections a server still holds: every state but those of a connection already closed (conntrack keeps TIME_WAIT
# up to two minutes, CLOSE ten seconds), which a busy server of short requests has many of and no slot for.
HELD_OPEN = khan("khan_connection", ONCE + ', state!~"TIME_WAIT|CLOSE"')
IDLE = "khan:pair_idle_connections:count_once"


def idle_ago(offset: str) -> str:
    """The pair's idle connections `offset` ago, 0 where it had none (its series is served only while > 0)."""
    return f"({IDLE} offset {offset} or {IDLE} * 0)"


DNS_UNREPLIED = khan("khan_connection", ONCE + ', transport="udp", dst_port="53", state="UNREPLIED"')

CONNECTIONS = Group(
    "khan.connections",
    comment=(
        "Records and the alerts that read them share one group: a group evaluates its rules in order, so an alert\n"
        "sees this evaluation's records (in separate groups it could see the previous one's)."
    ),
    rules=(
        Record(
            "khan:pair_connections:count_once",
            f"sum by ({PAIR})\n({khan('khan_connection', ONCE)})",
            "Connections right now from one source to one destination, counted once cluster-wide.",
        ),
        Record(
            "khan:pair_idle_connections:count_once",
            f"sum by ({PAIR})\n({khan('khan_connection_idle', ONCE)})",
            "... of them idle: no packet either way for the agent's --idle-after (pairs with idle ones only).",
        ),
        Record(
            "khan:pair_idle_seconds:max",
            f"max by ({PAIR})\n({khan('khan_connection_idle_seconds_max', ONCE)})",
            "... and how long the most silent of them has been idle.",
        ),
        Record(
            "khan:destination_connections:count_once",
            f"sum by ({DESTINATION})\n({khan('khan_connection', ONCE)})",
            "Inbound connections of one destination, over its sources and nodes, counted once.",
        ),
        Record(
            "khan:destination_outside_connections:count_once",
            f"sum by ({DESTINATION})\n({OUTSIDE})",
            "... of them from outside the cluster.",
        ),
        Alert(
            "KhanConnectionLeak",
            text(f"""
                (khan:pair_connections:count_once - khan:pair_connections:count_once offset 1h
                  >= {t("connectionLeakGrowth")})
                and (khan:pair_connections:count_once > khan:pair_connections:count_once offset 15m)
                and (khan:pair_connections:count_once offset 15m > khan:pair_connections:count_once offset 30m)
                and (khan:pair_connections:count_once offset 30m > khan:pair_connections:count_once offset 45m)
                and (khan:pair_connections:count_once offset 45m > khan:pair_connections:count_once offset 1h)
            """),
            "connectionLeak",
            "warning",
            "{{ $labels.src_name }} keeps opening connections to {{ $labels.dst_name }} without closing them",
            text("""
                Connections from {{ $labels.src_type }} {{ $labels.src_ns }}/{{ $labels.src_name }}
                {{ $labels.src_ip }} to {{ $labels.dst_type }} {{ $labels.dst_ns }}/{{ $labels.dst_name }} grew by
                {{ $value }} over the last hour and rose in every quarter of it.
            """),
            "Up by the threshold or more over the hour and up in each of its quarters: a steady climb, not a\n"
            "one-off step (which rises in one quarter only) nor an oscillation (which falls in some quarter).",
        ),
        Alert(
            "KhanIdleConnectionsPiling",
            text(f"""
                (
                  ({IDLE} - {idle_ago("1h")} >= {t("idlePilingGrowth")})
                  and ({IDLE} > {idle_ago("15m")})
                  and ({idle_ago("15m")} > {idle_ago("30m")})
                  and ({idle_ago("30m")} > {idle_ago("45m")})
                  and ({idle_ago("45m")} >= {idle_ago("1h")})
                )
                or (
                  ({IDLE} >= {t("idlePilingMinimum")})
                  and ({IDLE} / khan:pair_connections:count_once >= {t("idlePilingShare")})
                  and (khan:pair_idle_seconds:max >= {t("idlePilingLongestSeconds")})
                )
            """),
            "idlePiling",
            "warning",
            "{{ $labels.src_name }} holds idle connections to {{ $labels.dst_name }} that pile up",
            text("""
                Connections from {{ $labels.src_type }} {{ $labels.src_ns }}/{{ $labels.src_name }}
                {{ $labels.src_ip }} to {{ $labels.dst_type }} {{ $labels.dst_ns }}/{{ $labels.dst_name }} that
                sent no packet for the agent's --idle-after rose by many over the last hour, or are most of the
                pair's connections; khan_connection_idle_seconds_max says for how long.
            """),
            "Idle connections are the kernel's own word that nobody uses them: a client that opens connections\n"
            "and forgets them piles them up, rising in every quarter of the hour; a busy pool, however it grows\n"
            "and shrinks, uses its connections, and one that lost its load leaves a step of idle ones that its\n"
            "own idle timeout closes before they are an hour old.",
        ),
        Alert(
            "KhanServerOverloaded",
            surge("khan:destination_connections:count_once", "serverOverloadedConnections", "serverOverloadedRise"),
            "serverOverloaded",
            "warning",
            f"{{{{ $labels.dst_name }}}} has {t('serverOverloadedRise')} times the connections it had an hour ago",
            text(f"""
                {{{{ $labels.dst_type }}}} {{{{ $labels.dst_ns }}}}/{{{{ $labels.dst_name }}}} has {{{{ $value }}}}
                inbound connections (counted once across nodes), at least {t("serverOverloadedRise")}x an hour ago.
            """),
            "Many inbound connections and several times as many as an hour ago (or none an hour ago).",
        ),
        Alert(
            "KhanConnectFailures",
            text(f"""
                sum by ({CLUSTER}, dst_type, dst_ip, dst_ns, dst_name, dst_port)
                ({HALF_OPEN})
                >= {t("connectFailuresHalfOpen")}
            """),
            "connectFailures",
            "warning",
            "Connections to {{ $labels.dst_name }} port {{ $labels.dst_port }} are not answered",
            text("""
                {{ $value }} TCP connections to {{ $labels.dst_type }} {{ $labels.dst_ns }}/{{ $labels.dst_name }}
                {{ $labels.dst_ip }}:{{ $labels.dst_port }} are half-open (SYN_SENT, no reply).
            """),
            "Handshakes that get no answer: the destination is down, full, or filtered.",
        ),
        Alert(
            "KhanUnknownClients",
            surge("khan:destination_outside_connections:count_once", "unknownClientsConnections", "unknownClientsRise"),
            "unknownClients",
            "warning",
            "A surge of outside clients to {{ $labels.dst_name }}",
            text(f"""
                {{{{ $value }}}} connections from outside the cluster reach {{{{ $labels.dst_type }}}}
                {{{{ $labels.dst_ns }}}}/{{{{ $labels.dst_name }}}}, at least {t("unknownClientsRise")}x an hour ago.
            """),
            "Many connections from outside the cluster and several times as many as an hour ago (or none then).",
        ),
        Alert(
            "KhanConnectionLimitNear",
            text(f"""
                sum by ({DESTINATION}) ({HELD_OPEN})
                / on ({DESTINATION})
                max by ({DESTINATION}) ({khan("khan_connection_limit")} > 0)
                >= {t("connectionLimitShare")}
            """),
            "connectionLimitNear",
            "warning",
            "{{ $labels.dst_name }} is near its declared connection limit",
            text("""
                {{ $labels.dst_type }} {{ $labels.dst_ns }}/{{ $labels.dst_name }} has {{ $value | humanizePercentage }}
                of the connections its khan.io/max-connections annotation allows (open connections, counted once across
                nodes).
            """),
            "Inbound connections still open (not TIME_WAIT or CLOSE) against the limit declared by the annotation\n"
            "khan.io/max-connections. Every agent exports the same limits, so max takes one.",
        ),
    ),
)

CONNTRACK = Group(
    "khan.conntrack",
    comment="The node's conntrack table: how full it is, who fills it, and what the kernel drops.",
    rules=(
        Record(
            "khan:conntrack_table_usage:ratio",
            f"{khan('khan_conntrack_table_entries')} / {khan('khan_conntrack_table_limit')}",
            "Share of each node's table in use (one agent per node; entries and limit share every label).",
        ),
        Alert(
            "KhanConntrackTableFilling",
            f"khan:conntrack_table_usage:ratio >= {t('conntrackTableFillingShare')}",
            "conntrackTableFilling",
            "warning",
            "The conntrack table of {{ $labels.instance }} is {{ $value | humanizePercentage }} full",
            text("""
                The node of khan at {{ $labels.instance }} uses {{ $value | humanizePercentage }} of its conntrack
                table (nf_conntrack_max). When it is full the kernel drops new connections; KhanConntrackTableHog
                names the source holding the most entries.
            """),
        ),
        Alert(
            "KhanConntrackTableFull",
            f"khan:conntrack_table_usage:ratio >= {t('conntrackTableFullShare')}",
            "conntrackTableFull",
            "critical",
            "The conntrack table of {{ $labels.instance }} is nearly full",
            text("""
                The node of khan at {{ $labels.instance }} uses {{ $value | humanizePercentage }} of its conntrack
                table (nf_conntrack_max): new connections are about to be dropped (nf_conntrack: table full,
                dropping packet).
            """),
        ),
        Alert(
            "KhanConntrackTableHog",
            text(f"""
                (
                  topk by ({CLUSTER}, instance, node) (1,
                    sum by ({CLUSTER}, instance, node, {SOURCE}) ({khan("khan_connection")})
                    / on ({CLUSTER}, instance) group_left ()
                    {khan("khan_conntrack_table_limit")}
                  )
                  >= {t("conntrackTableHogShare")}
                )
                and on ({CLUSTER}, instance)
                (khan:conntrack_table_usage:ratio >= {t("conntrackTableFillingShare")})
            """),
            "conntrackTableHog",
            "warning",
            "{{ $labels.src_name }} holds {{ $value | humanizePercentage }} of the conntrack table of"
            " {{ $labels.node }}",
            text("""
                {{ $labels.src_type }} {{ $labels.src_ns }}/{{ $labels.src_name }} holds
                {{ $value | humanizePercentage }} of the conntrack table's limit on node {{ $labels.node }}
                ({{ $labels.instance }}), more than any other source, while that table is filling.
            """),
            "On a filling table, the source (workload with --aggregate workload, pod otherwise, or outside range)\n"
            "holding the largest share of the limit, over every entry of that node's table: every seen_from, not\n"
            "only the count-once ones, since each entry takes a slot.",
        ),
        Alert(
            "KhanConntrackDrops",
            text(f"""
                sum by ({CLUSTER}, instance, event) (
                  increase({DROPS}[5m])
                )
                > {t("conntrackDrops")}
            """),
            "conntrackDrops",
            "warning",
            "The kernel's conntrack on {{ $labels.instance }} counts {{ $labels.event }}",
            text("""
                {{ $value }} conntrack {{ $labels.event }} in 5 minutes on the node of khan at {{ $labels.instance }}:
                packets of new connections are being dropped (drop, early_drop: a full table; insert_failed: a full
                table or racing inserts, such as the DNS race).
            """),
            "The kernel's own statistics: packets dropped for want of an entry, or entries evicted or not inserted.",
        ),
        Alert(
            "KhanDNSUnreplied",
            text(f"""
                sum by ({CLUSTER}, {SOURCE}) (
                  {DNS_UNREPLIED}
                )
                >= {t("dnsUnreplied")}
            """),
            "dnsUnreplied",
            "warning",
            "DNS queries of {{ $labels.src_name }} go unanswered",
            text("""
                {{ $labels.src_type }} {{ $labels.src_ns }}/{{ $labels.src_name }} has {{ $value }} UDP entries to
                port 53 with no reply (counted once across nodes): a stale entry to a replaced DNS pod, the DNS race,
                or an unreachable resolver.
            """),
            "A healthy resolver answers in milliseconds, so unreplied entries to port 53 are few at any instant.",
        ),
    ),
)

HEALTH = Group(
    "khan.health",
    rules=(
        Alert(
            "KhanAgentDown",
            f"{UP} == 0",
            "agentDown",
            "warning",
            "khan on {{ $labels.instance }} does not answer scrapes",
            "Prometheus cannot scrape khan at {{ $labels.instance }}.",
        ),
        Alert(
            "KhanAgentMissing",
            text(f"""
                group by ({CLUSTER}, instance) ({UP} offset 1h)
                unless on ({CLUSTER}, instance) group by ({CLUSTER}, instance) ({UP})
            """),
            "agentMissing",
            "warning",
            "khan at {{ $labels.instance }} has disappeared",
            "khan at {{ $labels.instance }} was scraped an hour ago and is no longer a target.",
            "An agent scraped an hour ago is no longer discovered (its pod is gone or cannot be scheduled).",
        ),
        Alert(
            "KhanAgentsAbsent",
            text(f"""
                absent({UP})
                or label_replace(
                  group by ({CLUSTER}) (up) unless on ({CLUSTER}) group by ({CLUSTER}) ({UP}),
                  "job", "[[job]]", "", ""
                )
            """),
            "agentsAbsent",
            "critical",
            "No khan agent is scraped",
            text("""
                Prometheus has no target with job={{ $labels.job }}{{ with index $labels "[[cluster]]" }} in
                cluster {{ . }}{{ end }}:
                no connection is observed there.
            """),
            "No khan target at all, or (one Prometheus or Thanos for many clusters) a cluster whose Prometheus\n"
            "scrapes other targets but no khan: `up` without a job is the cluster's sign of life.",
        ),
        Alert(
            "KhanPollsFailing",
            text(f"""
                (time() - {khan("khan_last_successful_poll_timestamp_seconds")} > {t("pollsFailingSeconds")})
                or (
                  rate({khan("khan_poll_errors_total")}[10m]) > 0
                  and rate({khan("khan_polls_total")}[10m]) <= rate({khan("khan_poll_errors_total")}[10m])
                )
            """),
            "pollsFailing",
            "warning",
            "khan on {{ $labels.instance }} cannot read the conntrack table",
            text(f"""
                khan at {{{{ $labels.instance }}}} has had no successful poll for over {t("pollsFailingSeconds")} s,
                or every poll fails.
            """),
        ),
        Alert(
            "KhanPollSlow",
            f"{khan('khan_poll_duration_seconds')} > {t('pollSlowShare')} * {khan('khan_poll_interval_seconds')}",
            "pollSlow",
            "warning",
            "khan on {{ $labels.instance }} polls for most of its interval",
            f"The last poll at {{{{ $labels.instance }}}} took {{{{ $value }}}} s, over"
            f" {{{{ {t('pollSlowShare')} | humanizePercentage }}}} of the interval.",
        ),
        Alert(
            "KhanInventoryNotSynced",
            f"{khan('khan_inventory_synced')} == 0",
            "inventoryNotSynced",
            "warning",
            "khan on {{ $labels.instance }} has no {{ $labels.resource }} from the Kubernetes API",
            text("""
                The first list of {{ $labels.resource }} has not succeeded at {{ $labels.instance }}: its series are
                not being served.
            """),
        ),
        Alert(
            "KhanEventsLost",
            f"increase({khan('khan_events_dropped_total')}[10m]) > {t('eventsLost')}",
            "eventsLost",
            "warning",
            "khan on {{ $labels.instance }} lost conntrack events",
            text("""
                {{ $value }} conntrack events were dropped at {{ $labels.instance }} in 10 minutes: short connections
                among them are not counted.
            """),
        ),
        Alert(
            "KhanSeriesFolded",
            f"{khan('khan_series_folded')} > 0",
            "seriesFolded",
            "info",
            "khan on {{ $labels.instance }} folds {{ $labels.family }} series into overflow",
            text("""
                {{ $value }} label sets of {{ $labels.family }} are served as overflow series at {{ $labels.instance }}
                (--max-series): their details are hidden, totals are exact.
            """),
        ),
    ),
)

GROUPS = (CONNECTIONS, CONNTRACK, HEALTH)
