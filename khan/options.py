"""The option table: every flag of every command, once, as data: its environment variable, how its text is read
and checked, its help, and the commands that take it. cli.py builds argparse from it, and Settings from what
argparse and the environment give.

Defaults are Settings' own (khan/settings.py, each with its reason): the help shows them from there, so no
default is written twice. Every flag can also come from KHAN_ plus the flag in upper case (--node-name ->
KHAN_NODE_NAME); a flag on the command line wins, and an empty variable counts as unset. Imports only the bottom
of khan (settings and logs), so cli.py can read the table without importing any command.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from khan.logs import LEVELS
from khan.settings import DEFAULT_PORT, Aggregate, AuthMode, EventsMode, ExternalIps, LogFormat, Settings

AGENT, SNAPSHOT, DEMO = "agent", "snapshot", "demo"
COMMANDS = {
    AGENT: "poll the conntrack table and serve /metrics",
    SNAPSHOT: "one poll, printed as Prometheus text exposition",
    DEMO: "build a lab of network namespaces and run the agent on it (root)",
}
POLLING = (AGENT, SNAPSHOT)  # the commands that read a real node's table with an inventory

# Room for every overflow group (src_type x dst_type x transport x seen_from ...) and then some.
MIN_SERIES = 100
MAX_DIGITS = 9  # a count or a size of more digits is a typo, and int() of thousands of digits is slow or refused

# The text of a flag -> its Settings value; UsageError saying what is wrong. `flag` names it in the message.
Parser = Callable[[str, str], Any]


class UsageError(Exception):
    """A flag or variable has a value khan cannot use."""


@dataclass(frozen=True)
class Option:
    flag: str
    fields: tuple[str, ...]  # the Settings fields it sets (--listen sets two: its parser returns a pair)
    parse: Parser
    help: str = ""
    commands: tuple[str, ...] = POLLING
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    switch: bool = False  # present or absent; its variable is on when 1, true or yes
    # Text that replaces Settings' default in one command (the demo serves on loopback, polls more often).
    command_defaults: Mapping[str, str] = field(default_factory=dict)
    # Where the value comes from when neither the flag nor its variable gives one, instead of Settings' default.
    fallback: Callable[[], str] | None = None
    fallback_help: str = ""  # how the help names that fallback
    show_default: Callable[[Any], str] = str  # Settings' default as the flag would spell it, for the help

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return "KHAN_" + self.dest.upper()

    def default_text(self, command: str) -> str | None:
        """The default as the help shows it; None when there is nothing to show (unset, off, or a fallback)."""
        if command in self.command_defaults:
            return self.command_defaults[command]
        if self.fallback is not None or self.switch:
            return None
        values = [_SETTINGS_DEFAULTS[name] for name in self.fields]
        value = values[0] if len(values) == 1 else tuple(values)
        return self.show_default(value) if value not in (None, "") else None

    def help_text(self, command: str) -> str:
        sources = ", ".join(filter(None, (self.env, self.fallback_help)))
        default = self.default_text(command)
        note = f"[{sources}, default {default}]" if default is not None else f"[{sources}]"
        return f"{self.help} {note}" if self.help else note

    def value(self, command: str, given: object, environ: Mapping[str, str]) -> dict[str, Any]:
        """The Settings fields this option sets in `command`, from argparse's value (None: not on the command
        line), else its variable, else the command's default; the Settings default stays where none applies."""
        raw = environ.get(self.env) or None
        if self.switch:
            on = given is True or raw in ("1", "true", "yes")
            return {self.fields[0]: True} if on else {}
        text = given if isinstance(given, str) else raw
        if text is None:
            text = self.command_defaults.get(command)
        if not text and self.fallback is not None:  # an empty --node-name is no name either
            text = raw or self.fallback()
        if text is None:
            return {}
        if self.choices and text not in self.choices:  # argparse checks the command line, not the variables
            raise UsageError(f"{self.flag} must be {_one_of(self.choices)}, got {text!r}")
        parsed = self.parse(text, self.flag)
        return dict(zip(self.fields, parsed, strict=True)) if len(self.fields) > 1 else {self.fields[0]: parsed}


def text(raw: str, flag: str) -> str:
    return raw


def listen_address(raw: str, flag: str) -> tuple[str, int]:
    """HOST:PORT, :PORT or [IPv6]:PORT."""
    host, sep, port = raw.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} must be HOST:PORT or :PORT, got {raw!r}")
    return host.strip("[]"), int(port)


def seconds(at_least: float = 0.0, above: bool = False) -> Parser:
    """A number of seconds of at least `at_least` (more than it when `above`)."""

    def parse(raw: str, flag: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"{flag} must be a number of seconds, got {raw!r}") from None
        if not (value > at_least if above else value >= at_least):  # also refuses nan
            raise UsageError(f"{flag} must be {'more than' if above else 'at least'} {at_least:g} seconds")
        return value

    return parse


def whole_number(at_least: int) -> Parser:
    def parse(raw: str, flag: str) -> int:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_DIGITS) or int(raw) < at_least:
            raise UsageError(f"{flag} must be a whole number of at least {at_least}, got {raw[:20]!r}")
        return int(raw)

    return parse


def byte_count(at_least: int, at_most: int) -> Parser:
    def parse(raw: str, flag: str) -> int:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_DIGITS + 1) or not at_least <= int(raw) <= at_most:
            raise UsageError(f"{flag} must be a number of bytes from {at_least} to {at_most}, got {raw[:20]!r}")
        return int(raw)

    return parse


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _seconds_text(value: float) -> str:
    return f"{value:g}"


def _listen_text(value: tuple[str, int]) -> str:
    host, port = value
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()  # NODE_NAME: deploy/ sets it from the downward API


_SETTINGS_DEFAULTS: dict[str, Any] = {field.name: field.default for field in dataclasses.fields(Settings)}

# In the order of the help (and of the README's synopsis); a value is checked in this order too.
OPTIONS = (
    Option(
        "--inventory",
        ("inventory",),
        text,
        "Kubernetes Nodes, Pods and Services as a v1 List or multi-document YAML/JSON",
        metavar="PATH",
    ),
    Option(
        "--kubeconfig",
        ("kubeconfig",),
        text,
        "without --inventory: the Kubernetes API to watch; default in-cluster, then KUBECONFIG, then ~/.kube/config",
        metavar="PATH",
    ),
    Option(
        "--node-name",
        ("node_name",),
        text,
        "the node label",
        metavar="NAME",
        fallback=_node_name,
        fallback_help="NODE_NAME, hostname",
    ),
    Option("--netns", ("netns",), text, "read this named network namespace's table", metavar="NAME"),
    Option(
        "--listen",
        ("listen_host", "listen_port"),
        listen_address,
        "serve /metrics and the other endpoints here",
        commands=(AGENT, DEMO),
        metavar="HOST:PORT",
        command_defaults={DEMO: f"127.0.0.1:{DEFAULT_PORT}"},
        show_default=_listen_text,
    ),
    Option(
        "--interval",
        ("interval_seconds",),
        seconds(0.0, above=True),
        "seconds between polls",
        commands=(AGENT, DEMO),
        metavar="SECONDS",
        command_defaults={DEMO: "5"},
        show_default=_seconds_text,
    ),
    Option(
        "--deleted-pod-grace",
        ("deleted_pod_grace_seconds",),
        seconds(0.0),
        "a deleted pod's addresses keep its name this long unless another object claims them",
        commands=(AGENT,),
        metavar="SECONDS",
        show_default=_seconds_text,
    ),
    Option(
        "--watch-timeout",
        ("watch_timeout_seconds",),
        seconds(1.0),
        "the API server ends each watch after this; a watch silent 30 s longer is resumed",
        commands=(AGENT,),
        metavar="SECONDS",
        show_default=_seconds_text,
    ),
    Option(
        "--external-cidrs",
        ("external_cidrs",),
        text,  # read and checked by OutsidePolicy.parse when cli.py makes the label policy
        "outside addresses in a range are named after it (most specific range first)",
        metavar="NAME=CIDR,...",
    ),
    Option(
        "--external-ips",
        ("external_ips",),
        text,
        "drop: outside addresses leave src_ip/dst_ip empty",
        choices=get_args(ExternalIps),
    ),
    Option(
        "--aggregate",
        ("aggregate",),
        text,
        "workload: pods are named after their Deployment, StatefulSet, DaemonSet, Job or CronJob and their IPs "
        "leave the labels",
        choices=get_args(Aggregate),
    ),
    Option(
        "--max-series",
        ("max_series",),
        whole_number(MIN_SERIES),
        "series per metric family; beyond it the smallest fold into overflow series",
        metavar="N",
    ),
    Option(
        "--idle-after",
        ("idle_after_seconds",),
        whole_number(1),
        "a connection silent this long (no packet either way, by the kernel's own timer) counts in "
        "khan_connection_idle",
        metavar="SECONDS",
    ),
    Option(
        "--counter-ttl",
        ("counter_ttl_seconds",),
        seconds(1.0),
        "a counter series whose pair left the table and stayed idle this long is dropped",
        commands=(AGENT,),
        metavar="SECONDS",
        show_default=_seconds_text,
    ),
    Option(
        "--events",
        ("events",),
        text,
        "count from ctnetlink NEW/DESTROY events too; auto: where permitted",
        commands=(AGENT,),
        choices=get_args(EventsMode),
    ),
    Option(
        "--event-buffer",
        ("event_buffer_bytes",),
        byte_count(4096, 1 << 30),
        "the event socket's receive buffer; events beyond it are lost (counted) and a dump resynchronises",
        commands=(AGENT,),
        metavar="BYTES",
    ),
    Option(
        "--enable-accounting",
        ("enable_accounting",),
        text,
        "set net.netfilter.nf_conntrack_acct=1 at start if it is off (byte counters need it); khan changes no "
        "sysctl without this",
        commands=(AGENT,),
        switch=True,
    ),
    Option(
        "--web-config-file",
        ("web_config_file",),
        text,
        "TLS and basic auth in Prometheus exporter-toolkit's web configuration format; certificates are re-read "
        "when they change",
        commands=(AGENT,),
        metavar="PATH",
    ),
    Option(
        "--auth",
        ("auth",),
        text,
        "kubernetes: every endpoint but /healthz and /readyz needs a bearer token allowed to `get` its path "
        "(TokenReview, SubjectAccessReview)",
        commands=(AGENT,),
        choices=get_args(AuthMode),
    ),
    Option(
        "--tls-self-signed",
        ("tls_self_signed",),
        text,
        "serve HTTPS with a certificate made in memory at start, for scrapers that skip verification",
        commands=(AGENT,),
        switch=True,
    ),
    Option(
        "--web-max-requests",
        ("web_max_requests",),
        whole_number(1),
        "answers in flight beyond which a request gets 503 at once; /healthz and /readyz are not counted",
        commands=(AGENT,),
        metavar="N",
    ),
    Option(
        "--web-max-connections",
        ("web_max_connections",),
        whole_number(8),
        "open HTTP connections; at the cap a new one closes the longest idle (lowered to fit the file limit)",
        commands=(AGENT,),
        metavar="N",
    ),
    Option(
        "--web-header-timeout",
        ("web_header_timeout_seconds",),
        seconds(0.1),
        "a connection that sends no complete request headers this long after opening or after its last answer "
        "is closed",
        commands=(AGENT,),
        metavar="SECONDS",
        show_default=_seconds_text,
    ),
    Option(
        "--log-format",
        ("log_format",),
        text,
        "json lines, console rendering, or auto: console on a TTY",
        commands=(AGENT, SNAPSHOT, DEMO),
        choices=get_args(LogFormat),
    ),
    Option(
        "--log-level",
        ("log_level",),
        text,
        "debug adds a line per poll",
        commands=(AGENT, SNAPSHOT, DEMO),
        choices=LEVELS,
    ),
)


def options_of(command: str) -> tuple[Option, ...]:
    return tuple(option for option in OPTIONS if command in option.commands)


def settings_for(command: str, given: Mapping[str, object], environ: Mapping[str, str] = os.environ) -> Settings:
    """Settings for `command` from argparse's values (`given`, by dest) and the environment; UsageError."""
    values: dict[str, Any] = {}
    for option in options_of(command):
        values.update(option.value(command, given.get(option.dest), environ))
    return Settings(**values)
