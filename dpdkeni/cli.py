"""The ``dpdkeni`` command: parse, call the library, print. Thin on purpose.

Subcommands live in :mod:`dpdkeni.commands`, one module per family, each with ``register(subparsers)``;
handlers take the parsed args and return the exit status. Library errors are caught once here and printed as
one line: ``dpdkeni: error: message (hint)``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
from typing import Generator, Iterable, List, NoReturn, Optional, Tuple

from . import __version__, commands, host, statedir
from .errors import Error, as_error

log = logging.getLogger("dpdkeni")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ``dpdkeni --help`` lists the commands by what a person does; a command of a new module that is not listed here
# still shows, under "other"
COMMAND_GROUPS = (
    ("inspect", ("list", "show", "doctor", "leases")),
    ("hand over", ("attach", "release", "recover")),
    ("DPDK pieces", ("bind", "unbind", "overrides", "hugepages", "cdi")),
    ("events and daemon", ("watch", "wait", "daemon", "udev")),
    ("measure", ("fwd", "pmdtest")),
    ("Kubernetes", ("cni", "k8s")),
    ("lab", ("lab",)),
)


def command_groups(names: Iterable[str]) -> List[Tuple[str, List[str]]]:
    """(title, commands) in :data:`COMMAND_GROUPS` order for the commands in ``names``; the rest under "other"."""
    names = list(names)
    groups = [(title, [n for n in members if n in names]) for title, members in COMMAND_GROUPS]
    listed = {n for _, members in COMMAND_GROUPS for n in members}
    groups.append(("other", sorted(n for n in names if n not in listed)))
    return [(title, members) for title, members in groups if members]


class _GroupedHelp(argparse.HelpFormatter):
    """Lists the subcommands under a heading per group (:data:`COMMAND_GROUPS`) instead of in import order."""

    def _iter_indented_subactions(self, action: argparse.Action) -> Generator[argparse.Action, None, None]:
        if not isinstance(action, argparse._SubParsersAction):
            yield from super()._iter_indented_subactions(action)
            return
        subs = {a.dest: a for a in action._get_subactions()}
        self._indent()
        for title, names in command_groups(subs):
            yield argparse.Action(option_strings=[], dest=f"{title}:", help=None)
            self._indent()
            yield from (subs[n] for n in names)
            self._dedent()
        self._dedent()


def emit_json(obj: object) -> None:
    """Print one JSON document on stdout (``--json`` output)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def build_parser() -> Parser:
    """The whole command tree, assembled from every module in :mod:`dpdkeni.commands`."""
    parser = Parser(prog="dpdkeni", description="Hand hot-plugged NICs to containers, as kernel "
                    "interfaces or DPDK ports.", formatter_class=_GroupedHelp)
    parser.add_argument("--version", action="version", version=f"dpdkeni {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log on stderr (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; returns the exit status (0 done, 1 failed, 2 bad input, 3 refused by a guard)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="dpdkeni: %(message)s", stream=sys.stderr)
    try:
        with host.using(host.Host.from_env()):  # resolved once: the whole command sees one state dir, sysfs, models
            statedir.verify()
            return int(args.func(args) or 0)
    except Error as exc:
        print(f"dpdkeni: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # last resort: a system error (OSError, NetlinkError, psutil) no layer below mapped
        mapped = as_error(exc)
        if mapped is None:
            raise
        print(f"dpdkeni: error: {mapped.message}", file=sys.stderr)
        return 1


def run() -> NoReturn:
    """Console-script entry point."""
    sys.exit(main())
