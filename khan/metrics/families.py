"""Every metric khan serves: name, type, help and labels, declared once. The README's table mirrors this."""

from __future__ import annotations

from typing import Literal, NamedTuple

from khan.attribution.schema import (
    CONNECTION_LABELS,
    FLOW_BYTES_LABELS,
    LIMIT_LABELS,
    PAIR_LABELS,
    TRANSACTION_LABELS,
)


class MetricSpec(NamedTuple):
    name: str  # as exposed, counters with their _total suffix
    kind: Literal["gauge", "counter", "info"]
    help: str
    labels: tuple[str, ...] = ()


CONNECTION = MetricSpec(
    "khan_connection",
    "gauge",
    "Connections in the node's conntrack table right now, by both ends (original tuple), port, transport and state; "
    'seen_from=~"source|ingress" counts each connection in the cluster once.',
    CONNECTION_LABELS,
)
CONNECTION_IDLE = MetricSpec(
    "khan_connection_idle",
    "gauge",
    "Connections of khan_connection's label set with no packet either way for at least --idle-after seconds, by the "
    "kernel's own timer (state timeout - remaining timeout); TCP ESTABLISHED and UDP only, label sets with idle "
    "connections only.",
    CONNECTION_LABELS,
)
CONNECTION_IDLE_MAX = MetricSpec(
    "khan_connection_idle_seconds_max",
    "gauge",
    "The longest idle time among the pair's idle connections (those khan_connection_idle counts), in seconds; "
    "pairs with idle connections only.",
    PAIR_LABELS,
)
IDLE_AFTER = MetricSpec(
    "khan_connection_idle_after_seconds",
    "gauge",
    "Seconds without a packet after which a connection counts in khan_connection_idle (--idle-after).",
)
IDLE_UNKNOWN = MetricSpec(
    "khan_connection_idle_unknown",
    "gauge",
    "Entries of the last poll in a state idle time is judged in whose idle time is unknown, so not counted idle: "
    "above_state_timeout (more time left than the state's timeout: a timeout policy, or a sysctl changed since "
    "their last packet), short_timer (TCP ESTABLISHED with at most the unacknowledged, max_retrans or close "
    "timeout left).",
    ("reason",),
)
STATE_TIMEOUT = MetricSpec(
    "khan_conntrack_state_timeout_seconds",
    "gauge",
    "The timeout an entry's timer is set back to on every packet, by transport and state, from the sysctls of the "
    "namespace whose table is read (at every poll); idle time is judged by it.",
    ("transport", "state"),
)
CONNECTION_LIMIT = MetricSpec(
    "khan_connection_limit",
    "gauge",
    "Connections a destination accepts, as its Service or Pod declares in the annotation khan.io/max-connections; "
    "dst_* as khan_connection names it (under --aggregate workload, the sum over the workload's live pods).",
    LIMIT_LABELS,
)
CONNECTION_LIMITS_IGNORED = MetricSpec(
    "khan_connection_limits_ignored",
    "gauge",
    "Declared connection limits not served: invalid (Services and live Pods whose khan.io/max-connections is not a "
    "whole number from 1 to 100000000) or max_series (destinations beyond --max-series).",
    ("reason",),
)
OPENED = MetricSpec(
    "khan_connections_opened_total",
    "counter",
    "New connections since khan started, by both ends, port and transport (counted by the first dump that shows "
    "them, or by their DESTROY event if none did).",
    PAIR_LABELS,
)
FLOW_BYTES = MetricSpec(
    "khan_flow_bytes_total",
    "counter",
    "Bytes since khan started, by both ends, port, transport and direction (sent: source to destination, "
    "received: the replies); only while nf_conntrack_acct is on.",
    FLOW_BYTES_LABELS,
)
TRANSACTIONS = MetricSpec(
    "khan_service_transactions_total",
    "counter",
    "New connections whose destination was translated (a service), by the endpoint that served them.",
    TRANSACTION_LABELS,
)
SERIES_FOLDED = MetricSpec(
    "khan_series_folded",
    "gauge",
    "Label sets of a family served through its overflow series because of --max-series.",
    ("family",),
)
SERIES_EXPIRED = MetricSpec(
    "khan_series_expired_total",
    "counter",
    "Counter series dropped because their pair was gone from the table and idle for --counter-ttl.",
    ("family",),
)
SERIES_LABEL_SETS = MetricSpec(
    "khan_series_label_sets",
    "gauge",
    "Label sets a counter family holds in memory: its series and the folded label sets whose increments follow "
    "their overflow series; at most twice --max-series plus the overflow series.",
    ("family",),
)
SERIES_FORGOTTEN = MetricSpec(
    "khan_series_forgotten_total",
    "counter",
    "Folded label sets forgotten because more than --max-series were folded (least recently moved first); one "
    "that comes back folds again or starts a new series, and its old value stays in the overflow series.",
    ("family",),
)
TRACKED_ENTRIES = MetricSpec(
    "khan_tracked_entries", "gauge", "Conntrack entries whose counters khan remembers between two looks."
)
ENTRIES_VANISHED = MetricSpec(
    "khan_tracked_entries_vanished_total",
    "counter",
    "Entries that left the table with no DESTROY event seen: their bytes since the previous poll are not counted.",
)
TRACKED_ENTRIES_DROPPED = MetricSpec(
    "khan_tracked_entries_dropped_total",
    "counter",
    "Records of entries an interrupted dump did not read, dropped so that khan never remembers more entries than "
    "the table's limit (nf_conntrack_max); one still in the table counts again as new.",
)
CONNECTIONS_RECOVERED = MetricSpec(
    "khan_connections_recovered_total",
    "counter",
    "Connections whose NEW event was dropped but that were counted anyway: found by the dump that resynchronised, "
    "or by their DESTROY event (with exact bytes). Stays 0 unless NEW events still come after the first complete "
    "dump (the agent could not leave their group).",
)
CONNECTIONS_POSSIBLY_MISSED = MetricSpec(
    "khan_connections_possibly_missed_total",
    "counter",
    "At most this many connections opened and closed with their events dropped before any dump saw them, so they "
    "are counted nowhere: dropped events that neither a recovered connection nor a vanished entry explains (halved "
    "if NEW events still come, two lost per connection); settled two dumps after a loss ends.",
)
EVENTS_SUBSCRIBED = MetricSpec(
    "khan_events_subscribed",
    "gauge",
    "1 while khan receives ctnetlink events (NEW and DESTROY until its first complete dump, then DESTROY alone), 0 "
    "when it counts from dumps only.",
)
EVENTS = MetricSpec(
    "khan_events_total",
    "counter",
    "ctnetlink events received, by type (new, destroy); NEW only until the first complete dump.",
    ("type",),
)
EVENT_OVERFLOWS = MetricSpec(
    "khan_events_overflows_total",
    "counter",
    "Times the event socket overflowed (ENOBUFS); each is followed by a dump that resynchronises the state.",
)
EVENTS_DROPPED = MetricSpec(
    "khan_events_dropped_total",
    "counter",
    "Events the kernel dropped because khan's socket was full; connections opened and closed among them are lost.",
)
POLL_DURATION = MetricSpec("khan_poll_duration_seconds", "gauge", "Wall time of the last poll of the conntrack table.")
POLL_INTERVAL = MetricSpec(
    "khan_poll_interval_seconds",
    "gauge",
    "Seconds between the starts of two polls (--interval): a poll should take far less.",
)
POLL_ENTRIES = MetricSpec("khan_poll_entries", "gauge", "Conntrack entries read by the last successful poll.")
ENTRIES_READ = MetricSpec("khan_entries_read_total", "counter", "Conntrack entries read by all polls.")
ENTRIES_MALFORMED = MetricSpec(
    "khan_entries_malformed_total",
    "counter",
    "Conntrack entries (of dumps and events) skipped because their netlink bytes did not parse.",
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
    "invalid, internal).",
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
    CONNECTION_IDLE,
    CONNECTION_IDLE_MAX,
    IDLE_AFTER,
    IDLE_UNKNOWN,
    STATE_TIMEOUT,
    CONNECTION_LIMIT,
    CONNECTION_LIMITS_IGNORED,
    POLL_INTERVAL,
    OPENED,
    FLOW_BYTES,
    TRANSACTIONS,
    SERIES_FOLDED,
    SERIES_EXPIRED,
    SERIES_LABEL_SETS,
    SERIES_FORGOTTEN,
    TRACKED_ENTRIES,
    ENTRIES_VANISHED,
    TRACKED_ENTRIES_DROPPED,
    CONNECTIONS_RECOVERED,
    CONNECTIONS_POSSIBLY_MISSED,
    EVENTS_SUBSCRIBED,
    EVENTS,
    EVENT_OVERFLOWS,
    EVENTS_DROPPED,
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
