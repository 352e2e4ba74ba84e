"""The option table: flags, variables, defaults and checks, read through the real argparse parser (no root)."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest

from khan import cli
from khan.conntrack import events
from khan.options import COMMANDS, OPTIONS, options_of
from khan.settings import Settings

# Every flag of every command, as the README documents them: renaming, adding or dropping one is a deliberate edit.
FLAGS = {
    "agent": [
        "--inventory",
        "--kubeconfig",
        "--node-name",
        "--netns",
        "--listen",
        "--interval",
        "--deleted-pod-grace",
        "--watch-timeout",
        "--external-cidrs",
        "--external-ips",
        "--aggregate",
        "--max-series",
        "--idle-after",
        "--counter-ttl",
        "--events",
        "--event-buffer",
        "--enable-accounting",
        "--web-config-file",
        "--auth",
        "--tls-self-signed",
        "--web-max-requests",
        "--web-max-connections",
        "--web-header-timeout",
        "--log-format",
        "--log-level",
    ],
    "snapshot": [
        "--inventory",
        "--kubeconfig",
        "--node-name",
        "--netns",
        "--external-cidrs",
        "--external-ips",
        "--aggregate",
        "--max-series",
        "--idle-after",
        "--log-format",
        "--log-level",
    ],
    "demo": ["--listen", "--interval", "--log-format", "--log-level"],
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KHAN_") or name == "NODE_NAME":
            monkeypatch.delenv(name)


def settings(*argv: str) -> Settings:
    return cli.settings_from(cli.build_parser().parse_args(argv))


def test_each_command_has_exactly_its_flags() -> None:
    assert set(COMMANDS) == set(FLAGS)
    for command, flags in FLAGS.items():
        assert [option.flag for option in options_of(command)] == flags
    assert {option.env for option in OPTIONS} == {
        "KHAN_" + flag[2:].upper().replace("-", "_") for flag in FLAGS["agent"]
    }


def test_every_option_sets_settings_fields_and_shows_their_default(capsys: pytest.CaptureFixture[str]) -> None:
    defaults = {field.name: field.default for field in dataclasses.fields(Settings)}
    for option in OPTIONS:
        assert set(option.fields) <= set(defaults), option.flag
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["agent", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for note in (
        f"[KHAN_INTERVAL, default {Settings.interval_seconds:g}]",
        f"[KHAN_EVENT_BUFFER, default {Settings.event_buffer_bytes}]",
        f"[KHAN_MAX_SERIES, default {Settings.max_series}]",
        f"[KHAN_LISTEN, default :{Settings.listen_port}]",
        "[KHAN_NODE_NAME, NODE_NAME, hostname]",
        "[KHAN_ENABLE_ACCOUNTING]",
    ):
        assert note in shown


def test_no_flags_give_the_settings_defaults() -> None:
    hostname = socket.gethostname()
    assert settings("agent") == Settings(node_name=hostname)
    assert settings("snapshot") == Settings(node_name=hostname)
    assert settings("demo") == Settings(listen_host="127.0.0.1", interval_seconds=5.0)
    assert Settings.event_buffer_bytes == events.EVENT_BUFFER_BYTES


def test_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KHAN_INTERVAL", "12")
    monkeypatch.setenv("KHAN_LISTEN", "")  # empty: unset
    monkeypatch.setenv("KHAN_EXTERNAL_IPS", "drop")
    monkeypatch.setenv("KHAN_TLS_SELF_SIGNED", "yes")
    monkeypatch.setenv("KHAN_ENABLE_ACCOUNTING", "on")  # only 1, true and yes turn a switch on
    monkeypatch.setenv("KHAN_EVENT_BUFFER", "8192")
    monkeypatch.setenv("NODE_NAME", "from-downward-api")
    got = settings("agent", "--interval", "3", "--listen", "[::1]:8080", "--external-cidrs", "office=192.0.2.0/24")
    assert got.interval_seconds == 3.0  # the command line wins
    assert (got.listen_host, got.listen_port) == ("::1", 8080)
    assert (got.external_cidrs, got.external_ips) == ("office=192.0.2.0/24", "drop")
    assert (got.tls_self_signed, got.enable_accounting, got.event_buffer_bytes) == (True, False, 8192)
    assert got.node_name == "from-downward-api"
    monkeypatch.setenv("KHAN_NODE_NAME", "from-khan")
    assert settings("agent").node_name == settings("agent", "--node-name", "").node_name == "from-khan"
    assert settings("agent", "--node-name", "n1").node_name == "n1"
    assert settings("demo").interval_seconds == 12.0  # the demo's own default gives way to the variable
    assert settings("demo").event_buffer_bytes == Settings.event_buffer_bytes  # not a demo flag: ignored


@pytest.mark.parametrize(
    ("argv", "environment", "message"),
    [
        (["agent", "--interval", "x"], {}, "--interval must be a number of seconds, got 'x'"),
        (["agent", "--interval", "0"], {}, "--interval must be more than 0 seconds"),
        (["demo", "--interval", "nan"], {}, "--interval must be more than 0 seconds"),
        (["agent", "--listen", "9986"], {}, "--listen must be HOST:PORT or :PORT, got '9986'"),
        (["agent", "--listen", ":65536"], {}, "--listen must be HOST:PORT or :PORT, got ':65536'"),
        (["agent", "--deleted-pod-grace", "-1"], {}, "--deleted-pod-grace must be at least 0 seconds"),
        (["agent", "--watch-timeout", "0.5"], {}, "--watch-timeout must be at least 1 seconds"),
        (["agent", "--counter-ttl", "soon"], {}, "--counter-ttl must be a number of seconds, got 'soon'"),
        (["agent", "--web-header-timeout", "0"], {}, "--web-header-timeout must be at least 0.1 seconds"),
        (
            ["agent", "--event-buffer", "4095"],
            {},
            "--event-buffer must be a number of bytes from 4096 to 1073741824, got '4095'",
        ),
        (["snapshot", "--max-series", "99"], {}, "--max-series must be a whole number of at least 100, got '99'"),
        (
            ["snapshot", "--max-series", "9" * 5000],  # int() refuses more than 4300 digits: no traceback
            {},
            f"--max-series must be a whole number of at least 100, got '{'9' * 20}'",
        ),
        (["agent", "--web-max-requests", "0"], {}, "--web-max-requests must be a whole number of at least 1, got '0'"),
        (
            ["agent", "--web-max-connections", "7"],
            {},
            "--web-max-connections must be a whole number of at least 8, got '7'",
        ),
        (["snapshot", "--external-cidrs", "office"], {}, "--external-cidrs wants NAME=CIDR items, got 'office'"),
        (["agent"], {"KHAN_EXTERNAL_IPS": "hide"}, "--external-ips must be keep or drop, got 'hide'"),
        (["agent"], {"KHAN_INTERVAL": "-5"}, "--interval must be more than 0 seconds"),
        # argparse checks choices on the command line only; a variable gets the same check here.
        (["snapshot"], {"KHAN_AGGREGATE": "namespace"}, "--aggregate must be pod or workload, got 'namespace'"),
        (["demo"], {"KHAN_LOG_LEVEL": "trace"}, "--log-level must be debug, info, warning or error, got 'trace'"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(
    argv: list[str],
    environment: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"khan: {message}\n"


@pytest.mark.parametrize(
    "argv",
    [["agent", "--events", "maybe"], ["agent", "--nope"], ["demo", "--inventory", "x"], ["snapshot", "--listen", ":1"]],
)
def test_argparse_refuses_what_it_knows_with_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "usage: khan" in capsys.readouterr().err
