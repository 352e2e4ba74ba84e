"""Settings: frozen, each default with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from khan.metrics.outside import OutsidePolicy

DEFAULT_PORT = 9986  # khan's entry in Prometheus's default exporter port allocations list
DEFAULT_LISTEN = f":{DEFAULT_PORT}"


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
    log_format: str = "auto"  # json off a TTY, console on one
    log_level: str = "info"
    # A poll retries an interrupted dump this many times before it reports the inconsistent result.
    dump_attempts: int = 3
    # Outside addresses: named ranges, and whether their IPs become labels (kept by default, as Khan did).
    outside: OutsidePolicy = field(default_factory=OutsidePolicy)
