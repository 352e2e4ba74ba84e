"""Settings: frozen plain values, each default with its reason. The one place a flag's default is written
(khan/options.py shows them in the help); imports nothing of khan, so every layer may read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EventsMode = Literal["auto", "on", "off"]
AuthMode = Literal["none", "kubernetes"]
Aggregate = Literal["pod", "workload"]
ExternalIps = Literal["keep", "drop"]
LogFormat = Literal["auto", "json", "console"]

DEFAULT_PORT = 9986  # khan's entry in Prometheus's default exporter port allocations list
# 2,000 connections a second are 4,000 events; one event takes about 1 KiB of buffer (its skb), so 32 MiB (about
# 30,000 events) rides out a stall of several seconds of a busy node's churn.
EVENT_BUFFER_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    # A file of Kubernetes objects to attribute addresses with; None means the Kubernetes API.
    inventory: str | None = None
    # The kubeconfig for the API; None: in-cluster, then KUBECONFIG, then ~/.kube/config.
    kubeconfig: str | None = None
    # A deleted pod's addresses keep its name this long (unless another object claims them): its connections
    # outlive it in the table (TIME_WAIT alone lasts 120 s).
    deleted_pod_grace_seconds: float = 120.0
    # The API server ends each watch after this (client-go uses 5-10 minutes); a stream silent for 30 s longer
    # (or twice as long, if shorter) is presumed dead and resumed.
    watch_timeout_seconds: float = 300.0
    # The `node` label; from --node-name, KHAN_NODE_NAME, NODE_NAME (the downward API), then the hostname.
    node_name: str = ""
    # All interfaces: the agent runs with hostNetwork and Prometheus scrapes the node's address.
    listen_host: str = ""
    listen_port: int = DEFAULT_PORT
    # 30 s: the original Khan's period; a full table dump costs ~1-2 s of one core.
    interval_seconds: float = 30.0
    # The network namespace whose table is read (by name under /run/netns); None is the agent's own.
    netns: str | None = None
    log_format: LogFormat = "auto"  # json off a TTY, console on one
    log_level: str = "info"
    # A poll retries an interrupted dump this many times before it reports the inconsistent result.
    dump_attempts: int = 3
    # How much of an owner the labels keep (khan.attribution.labels.label_policy makes the LabelPolicy): pods or
    # their workloads; outside addresses named after ranges (NAME=CIDR,..., as given) and their IPs kept or
    # dropped (kept by default, as Khan did).
    aggregate: Aggregate = "pod"
    external_cidrs: str = ""
    external_ips: ExternalIps = "keep"
    # Series per metric family: a node with 10,000 distinct pairs is already unusual; beyond it the smallest
    # fold into overflow series, so a scan or a fan-out cannot blow up Prometheus.
    max_series: int = 10_000
    # A counter series whose pair has left the table and stayed idle this long is dropped: long enough to
    # span a gap between a client's bursts (and a few scrapes), short enough that finished pods go.
    counter_ttl_seconds: float = 900.0
    # A connection with no packet either way for this long counts in khan_connection_idle: ten minutes is longer
    # than the pauses of a busy pool (and than most pools' own idle timeouts), far shorter than the 5 days an
    # ESTABLISHED entry may sit silent. Whole seconds: the kernel's remaining timeouts are whole seconds.
    idle_after_seconds: int = 600
    # ctnetlink NEW/DESTROY events: auto subscribes where permitted (CAP_NET_ADMIN) and falls back to dumps.
    events: EventsMode = "auto"
    # The event socket's receive buffer; events beyond it are lost (counted) and a dump resynchronises.
    event_buffer_bytes: int = EVENT_BUFFER_BYTES
    # Turn nf_conntrack_acct on at start when it is off (byte counters need it). Never done unless asked.
    enable_accounting: bool = False
    # exporter-toolkit's web configuration (TLS, basic auth); None serves plain HTTP to anyone, as on a laptop.
    web_config_file: str | None = None
    # kubernetes: bearer tokens checked by TokenReview and SubjectAccessReview (deploy/ turns it on).
    auth: AuthMode = "none"
    # TLS with an in-memory certificate made at start, for scrapers that skip verification (deploy/'s default).
    tls_self_signed: bool = False
    # Answers in flight beyond which a request gets 503 at once (node_exporter's --web.max-requests default);
    # /healthz and /readyz are never counted.
    web_max_requests: int = 40
    # Open HTTP connections; at the cap a new one closes the longest idle. Lowered at start where the file
    # limit could not also hold the agent's own descriptors.
    web_max_connections: int = 256
    # A connection must send a request's headers within this long of opening or of its last answer (slowloris).
    web_header_timeout_seconds: float = 5.0
