"""Flags and environment -> settings, and the three commands. Nothing else happens here.

The flags, their environment variables and their checks are the option table's (khan/options.py); their defaults
are Settings'. Heavy imports happen inside each command, so `khan snapshot` pays only for what it uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from khan import __version__
from khan.attribution.labels import label_policy
from khan.options import COMMANDS, UsageError, options_of, settings_for
from khan.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="khan", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"khan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, summary in COMMANDS.items():
        sub = commands.add_parser(command, help=summary)
        for option in options_of(command):
            # default None: not on the command line, so the variable or the default applies (settings_for)
            if option.switch:
                sub.add_argument(option.flag, action="store_true", default=None, help=option.help_text(command))
            else:
                sub.add_argument(
                    option.flag,
                    default=None,
                    metavar=option.metavar,
                    choices=option.choices or None,
                    help=option.help_text(command),
                )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    settings = settings_for(args.command, vars(args))
    try:
        label_policy(settings)  # reads --external-cidrs and --external-ips
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return settings


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
