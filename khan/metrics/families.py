"""Every metric khan serves: name, type, help and labels, declared once. The README's table mirrors this."""

from __future__ import annotations

from typing import Literal, NamedTuple


class MetricSpec(NamedTuple):
    name: str  # as exposed, counters with their _total suffix
    kind: Literal["gauge", "counter", "info"]
    help: str
    labels: tuple[str, ...] = ()


CONNECTION_LABELS = (
    "node",
    "src_type",
    "src_ip",
    "src_ns",
    "src_app",
    "src_name",
    "dst_type",
    "dst_ip",
    "dst_ns",
    "dst_app",
    "dst_name",
    "dst_port",
    "transport",
    "state",
)

CONNECTION = MetricSpec(
    "khan_connection",
    "gauge",
    "Connections in the node's conntrack table right now, by both ends (original tuple), port, transport and state.",
    CONNECTION_LABELS,
)
POLL_DURATION = MetricSpec("khan_poll_duration_seconds", "gauge", "Wall time of the last poll of the conntrack table.")
POLL_ENTRIES = MetricSpec("khan_poll_entries", "gauge", "Conntrack entries read by the last successful poll.")
ENTRIES_READ = MetricSpec("khan_entries_read_total", "counter", "Conntrack entries read by all polls.")
ENTRIES_MALFORMED = MetricSpec(
    "khan_entries_malformed_total", "counter", "Conntrack entries skipped because their netlink bytes did not parse."
)
DUMPS_INTERRUPTED = MetricSpec(
    "khan_dumps_interrupted_total",
    "counter",
    "Polls whose dump the kernel flagged as inconsistent (NLM_F_DUMP_INTR) on every attempt; their entries were kept.",
)
POLLS = MetricSpec("khan_polls_total", "counter", "Polls of the conntrack table, successful or not.")
POLL_ERRORS = MetricSpec("khan_poll_errors_total", "counter", "Polls of the conntrack table that failed.")
LAST_SUCCESS = MetricSpec(
    "khan_last_successful_poll_timestamp_seconds", "gauge", "Unix time at which the last successful poll finished."
)
TABLE_ENTRIES = MetricSpec(
    "khan_conntrack_table_entries", "gauge", "Entries in the conntrack table, as the kernel counts them."
)
TABLE_LIMIT = MetricSpec(
    "khan_conntrack_table_limit", "gauge", "Most entries the conntrack table may hold (nf_conntrack_max)."
)
TABLE_EVENTS = MetricSpec(
    "khan_conntrack_table_events_total",
    "counter",
    "The kernel's conntrack statistics summed over CPUs (drop, early_drop, insert_failed, ...).",
    ("event",),
)
ACCOUNTING = MetricSpec(
    "khan_conntrack_accounting_enabled",
    "gauge",
    "1 when nf_conntrack_acct is on, so flows carry byte and packet counters.",
)
INVENTORY_OBJECTS = MetricSpec(
    "khan_inventory_objects", "gauge", "Kubernetes objects in the inventory, by kind.", ("kind",)
)
INVENTORY_ADDRESSES = MetricSpec("khan_inventory_addresses", "gauge", "Addresses the inventory attributes to an owner.")
INVENTORY_SYNCED = MetricSpec(
    "khan_inventory_synced",
    "gauge",
    "1 once the first list of the resource from the Kubernetes API has succeeded (API inventory only).",
    ("resource",),
)
WATCH_STARTS = MetricSpec(
    "khan_inventory_watch_starts_total",
    "counter",
    "Watches of the Kubernetes API started, by resource and why: initial, closed (server timeout, routine), "
    "expired (410 Gone, listed again), inactive (silent stream dropped) or error.",
    ("resource", "reason"),
)
API_ERRORS = MetricSpec(
    "khan_kube_api_errors_total",
    "counter",
    "Failed Kubernetes API requests, by resource, verb (list, watch) and code (HTTP status, connection, timeout, "
    "invalid).",
    ("resource", "verb", "code"),
)
LAST_EVENT_AGE = MetricSpec(
    "khan_inventory_last_event_age_seconds",
    "gauge",
    "Seconds since the last list, event or bookmark of the resource arrived from the Kubernetes API.",
    ("resource",),
)
LINGERING_PODS = MetricSpec(
    "khan_inventory_deleted_pods",
    "gauge",
    "Deleted pods whose addresses still resolve to them during the grace period (--deleted-pod-grace).",
)
BUILD_INFO = MetricSpec(
    "khan_build", "info", "khan's version and the Python it runs on.", ("version", "python_version")
)

ALL: tuple[MetricSpec, ...] = (
    CONNECTION,
    POLL_DURATION,
    POLL_ENTRIES,
    ENTRIES_READ,
    ENTRIES_MALFORMED,
    DUMPS_INTERRUPTED,
    POLLS,
    POLL_ERRORS,
    LAST_SUCCESS,
    TABLE_ENTRIES,
    TABLE_LIMIT,
    TABLE_EVENTS,
    ACCOUNTING,
    INVENTORY_OBJECTS,
    INVENTORY_ADDRESSES,
    INVENTORY_SYNCED,
    WATCH_STARTS,
    API_ERRORS,
    LAST_EVENT_AGE,
    LINGERING_PODS,
    BUILD_INFO,
)
