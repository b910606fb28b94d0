"""``dpdkeni show NIC``: everything known about one NIC."""
from __future__ import annotations

import argparse

from ..inventory import find_nic


def cmd_show(args: argparse.Namespace) -> int:
    nic = find_nic(args.nic)
    if args.json:
        from ..cli import emit_json
        emit_json(nic.to_dict())
        return 0
    for key, value in nic.to_dict().items():
        if value not in (None, [], ""):
            print(f"{key:>13}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``show``."""
    p = sub.add_parser("show", help="everything known about one NIC (PCI address, MAC or interface name)")
    p.add_argument("nic", metavar="NIC", help="PCI address (0000:00:04.0 or 00:04.0), MAC, or interface name")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_show)
