"""Flags and environment -> settings, and the three commands. Nothing else happens here.

Every flag can also come from an environment variable named KHAN_ plus the flag in upper case
(--node-name -> KHAN_NODE_NAME); a flag on the command line wins. Heavy imports happen inside each command,
so `khan snapshot` pays only for what it uses.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence

from khan import __version__
from khan.logs import LEVELS
from khan.metrics.labels import AGGREGATES, LabelPolicy
from khan.metrics.outside import OutsidePolicy
from khan.settings import DEFAULT_LISTEN, Settings

# Room for every overflow group (src_type x dst_type x transport x seen_from ...) and then some.
MIN_SERIES = 100


class UsageError(Exception):
    """A flag or variable has a value khan cannot use."""


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get("KHAN_" + name.upper().replace("-", "_"))
    return value if value not in (None, "") else default


def default_node_name() -> str:
    return env("node-name") or os.environ.get("NODE_NAME") or socket.gethostname()


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT, :PORT or [IPv6]:PORT."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen must be HOST:PORT or :PORT, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="khan", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"khan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--inventory",
            default=env("inventory"),
            metavar="PATH",
            help="Kubernetes Nodes, Pods and Services as a v1 List or multi-document YAML/JSON [KHAN_INVENTORY]",
        )
        sub.add_argument(
            "--kubeconfig",
            default=env("kubeconfig"),
            metavar="PATH",
            help="without --inventory: the Kubernetes API to watch; default in-cluster, then KUBECONFIG, then "
            "~/.kube/config [KHAN_KUBECONFIG]",
        )
        sub.add_argument(
            "--node-name", default=None, metavar="NAME", help="the node label [KHAN_NODE_NAME, NODE_NAME, hostname]"
        )
        sub.add_argument(
            "--netns",
            default=env("netns"),
            metavar="NAME",
            help="read this named network namespace's table [KHAN_NETNS]",
        )
        sub.add_argument(
            "--external-cidrs",
            default=env("external-cidrs", ""),
            metavar="NAME=CIDR,...",
            help="outside addresses in a range are named after it (most specific range first) [KHAN_EXTERNAL_CIDRS]",
        )
        sub.add_argument(
            "--external-ips",
            default=env("external-ips", "keep"),
            choices=("keep", "drop"),
            help="drop: outside addresses leave src_ip/dst_ip empty [KHAN_EXTERNAL_IPS, default keep]",
        )
        sub.add_argument(
            "--aggregate",
            default=env("aggregate", "pod"),
            choices=AGGREGATES,
            help="workload: pods are named after their Deployment, StatefulSet, DaemonSet, Job or CronJob and "
            "their IPs leave the labels [KHAN_AGGREGATE, default pod]",
        )
        sub.add_argument(
            "--max-series",
            default=env("max-series", "10000"),
            metavar="N",
            help="series per metric family; beyond it the smallest fold into overflow series "
            "[KHAN_MAX_SERIES, default 10000]",
        )
        sub.add_argument("--log-format", default=env("log-format", "auto"), choices=("auto", "json", "console"))
        sub.add_argument("--log-level", default=env("log-level", "info"), choices=LEVELS)

    agent = commands.add_parser("agent", help="poll the conntrack table and serve /metrics")
    common(agent)
    agent.add_argument(
        "--listen",
        default=env("listen", DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"[KHAN_LISTEN, default {DEFAULT_LISTEN}]",
    )
    agent.add_argument(
        "--interval",
        default=env("interval", "30"),
        metavar="SECONDS",
        help="seconds between polls [KHAN_INTERVAL, default 30]",
    )
    agent.add_argument(
        "--deleted-pod-grace",
        default=env("deleted-pod-grace", "120"),
        metavar="SECONDS",
        help="a deleted pod's addresses keep its name this long unless another object claims them "
        "[KHAN_DELETED_POD_GRACE, default 120]",
    )
    agent.add_argument(
        "--watch-timeout",
        default=env("watch-timeout", "300"),
        metavar="SECONDS",
        help="the API server ends each watch after this; a watch silent 30 s longer is resumed "
        "[KHAN_WATCH_TIMEOUT, default 300]",
    )

    agent.add_argument(
        "--counter-ttl",
        default=env("counter-ttl", "900"),
        metavar="SECONDS",
        help="a counter series whose pair left the table and stayed idle this long is dropped "
        "[KHAN_COUNTER_TTL, default 900]",
    )
    agent.add_argument(
        "--events",
        default=env("events", "auto"),
        choices=("auto", "on", "off"),
        help="count from ctnetlink NEW/DESTROY events too; auto: where permitted [KHAN_EVENTS, default auto]",
    )
    agent.add_argument(
        "--event-buffer",
        default=env("event-buffer", str(32 * 1024 * 1024)),
        metavar="BYTES",
        help="the event socket's receive buffer; events beyond it are lost (counted) and a dump resynchronises "
        "[KHAN_EVENT_BUFFER, default 33554432]",
    )
    agent.add_argument(
        "--enable-accounting",
        action="store_true",
        default=env("enable-accounting", "") in ("1", "true", "yes"),
        help="set net.netfilter.nf_conntrack_acct=1 at start if it is off (byte counters need it); khan changes "
        "no sysctl without this [KHAN_ENABLE_ACCOUNTING]",
    )
    agent.add_argument(
        "--web-config-file",
        default=env("web-config-file"),
        metavar="PATH",
        help="TLS and basic auth in Prometheus exporter-toolkit's web configuration format; certificates are "
        "re-read when they change [KHAN_WEB_CONFIG_FILE]",
    )
    agent.add_argument(
        "--auth",
        default=env("auth", "none"),
        choices=("none", "kubernetes"),
        help="kubernetes: every endpoint but /healthz and /readyz needs a bearer token allowed to `get` its path "
        "(TokenReview, SubjectAccessReview) [KHAN_AUTH, default none]",
    )
    agent.add_argument(
        "--tls-self-signed",
        action="store_true",
        default=env("tls-self-signed", "") in ("1", "true", "yes"),
        help="serve HTTPS with a certificate made in memory at start, for scrapers that skip verification "
        "[KHAN_TLS_SELF_SIGNED]",
    )
    agent.add_argument(
        "--web-max-requests",
        default=env("web-max-requests", "40"),
        metavar="N",
        help="answers in flight beyond which a request gets 503 at once; /healthz and /readyz are not counted "
        "[KHAN_WEB_MAX_REQUESTS, default 40]",
    )
    agent.add_argument(
        "--web-max-connections",
        default=env("web-max-connections", "256"),
        metavar="N",
        help="open HTTP connections; at the cap a new one closes the longest idle (lowered to fit the file "
        "limit) [KHAN_WEB_MAX_CONNECTIONS, default 256]",
    )
    agent.add_argument(
        "--web-header-timeout",
        default=env("web-header-timeout", "5"),
        metavar="SECONDS",
        help="a connection that sends no complete request headers this long after opening or after its last "
        "answer is closed [KHAN_WEB_HEADER_TIMEOUT, default 5]",
    )

    snapshot = commands.add_parser("snapshot", help="one poll, printed as Prometheus text exposition")
    common(snapshot)

    demo = commands.add_parser("demo", help="build a lab of network namespaces and run the agent on it (root)")
    demo.add_argument("--listen", default=env("listen", "127.0.0.1:9986"), metavar="HOST:PORT")
    demo.add_argument("--interval", default=env("interval", "5"), metavar="SECONDS")
    demo.add_argument("--log-format", default=env("log-format", "auto"), choices=("auto", "json", "console"))
    demo.add_argument("--log-level", default=env("log-level", "info"), choices=LEVELS)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    listen_host, listen_port = parse_listen(getattr(args, "listen", DEFAULT_LISTEN))
    try:
        interval = float(getattr(args, "interval", 30))
    except ValueError:
        raise UsageError(f"--interval must be a number of seconds, got {args.interval!r}") from None
    if not interval > 0:
        raise UsageError("--interval must be more than 0 seconds")
    try:
        outside = OutsidePolicy.parse(getattr(args, "external_cidrs", ""), getattr(args, "external_ips", "keep"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    grace = _seconds(args, "deleted_pod_grace", 120.0, minimum=0.0)
    counter_ttl = _seconds(args, "counter_ttl", 900.0, minimum=1.0)
    raw_buffer = str(getattr(args, "event_buffer", 32 * 1024 * 1024))
    if not (raw_buffer.isascii() and raw_buffer.isdigit()) or not 4096 <= int(raw_buffer) <= 1 << 30:
        raise UsageError(f"--event-buffer must be a number of bytes from 4096 to 1073741824, got {raw_buffer!r}")
    raw_max = getattr(args, "max_series", "10000")
    if not (str(raw_max).isascii() and str(raw_max).isdigit()) or int(raw_max) < MIN_SERIES:
        raise UsageError(f"--max-series must be a whole number of at least {MIN_SERIES}, got {raw_max!r}")
    watch_timeout = _seconds(args, "watch_timeout", 300.0, minimum=1.0)
    max_requests = _count(args, "web_max_requests", 40, minimum=1)
    max_connections = _count(args, "web_max_connections", 256, minimum=8)
    header_timeout = _seconds(args, "web_header_timeout", 5.0, minimum=0.1)
    return Settings(
        inventory=getattr(args, "inventory", None),
        kubeconfig=getattr(args, "kubeconfig", None),
        deleted_pod_grace_seconds=grace,
        watch_timeout_seconds=watch_timeout,
        node_name=getattr(args, "node_name", None) or default_node_name(),
        listen_host=listen_host,
        listen_port=listen_port,
        interval_seconds=interval,
        netns=getattr(args, "netns", None),
        log_format=args.log_format,
        log_level=args.log_level,
        labels=LabelPolicy(outside, getattr(args, "aggregate", "pod")),
        max_series=int(raw_max),
        counter_ttl_seconds=counter_ttl,
        events=getattr(args, "events", "auto"),
        event_buffer_bytes=int(raw_buffer),
        enable_accounting=getattr(args, "enable_accounting", False),
        web_config_file=getattr(args, "web_config_file", None),
        auth=getattr(args, "auth", "none"),
        tls_self_signed=getattr(args, "tls_self_signed", False),
        web_max_requests=max_requests,
        web_max_connections=max_connections,
        web_header_timeout_seconds=header_timeout,
    )


def _seconds(args: argparse.Namespace, name: str, default: float, minimum: float) -> float:
    raw = getattr(args, name, default)
    flag = "--" + name.replace("_", "-")
    try:
        seconds = float(raw)
    except ValueError:
        raise UsageError(f"{flag} must be a number of seconds, got {raw!r}") from None
    if not seconds >= minimum:
        raise UsageError(f"{flag} must be at least {minimum:g} seconds")
    return seconds


def _count(args: argparse.Namespace, name: str, default: int, minimum: int) -> int:
    raw = str(getattr(args, name, default))
    flag = "--" + name.replace("_", "-")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or int(raw) < minimum:
        raise UsageError(f"{flag} must be a whole number of at least {minimum}, got {raw[:20]!r}")
    return int(raw)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except UsageError as exc:
        print(f"khan: {exc}", file=sys.stderr)
        return 2
    from khan import logs

    logs.configure(settings.log_format, settings.log_level)
    try:
        if args.command == "agent":
            from khan.app import run_agent

            run_agent(settings)
        elif args.command == "snapshot":
            from khan.snapshot_command import run_snapshot

            run_snapshot(settings)
        else:
            from khan.demo.command import run_demo

            run_demo(settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every expected failure carries one clear line
        message = _one_line(exc)
        if message is None:
            raise
        print(f"khan: {message}", file=sys.stderr)
        return 1
    return 0


def _one_line(exc: Exception) -> str | None:
    """The operator-facing line for an expected failure; None for a bug (which keeps its traceback)."""
    from khan.conntrack.namespace import NamespaceError
    from khan.conntrack.netlink import ConntrackError
    from khan.inventory.api_config import ApiConfigError
    from khan.inventory.from_file import InventoryError

    expected: tuple[type[Exception], ...] = (ConntrackError, NamespaceError, InventoryError, ApiConfigError)
    if app := sys.modules.get("khan.app"):
        expected += (app.StartupError,)
    if lab := sys.modules.get("khan.demo.namespaces"):
        expected += (lab.LabError,)
    if kube := sys.modules.get("khan.inventory.kube"):
        expected += (kube.ListError,)
    if isinstance(exc, expected):
        return (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or str(exc)
    return None
