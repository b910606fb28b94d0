"""``dpdkeni attach``, ``dpdkeni release``, ``dpdkeni recover`` and ``dpdkeni leases``."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, List

from .. import models  # handoff (pyroute2) is imported in the handlers: see commands/dpdk.py


def _emit(obj: object) -> None:
    from ..cli import emit_json
    emit_json(obj)


def _attached(lease: Any, verb: str = "attached") -> str:
    where = f" as {lease.params.get('ifname')}" if lease.mode == "netdev" else " (dpdk)"
    return f"{verb} {lease.key} to {lease.target}{where}"


def _say_released(nic: str, lease: Any) -> None:
    if lease is None:
        print(f"{nic} is not leased; nothing to do", file=sys.stderr)
    else:
        print(f"released {lease.key} from {lease.target} ({lease.params.get('outcome', 'returned')})")


# a --batch item's keys: the attach() argument each one sets, and the JSON type it takes
BATCH_KEYS = {"nic": ("nic", str), "to": ("target", str), "target": ("target", str), "mode": ("mode", str),
              "ifname": ("ifname", str), "addresses": ("addresses", str), "gateway": ("gateway", str),
              "mtu": ("mtu", int), "dhcp": ("dhcp", bool), "table": ("table", int), "hugepages": ("hugepages", str),
              "driver": ("driver", str), "noiommu": ("noiommu", bool), "force": ("force", bool)}
_KIND = {str: "a string", int: "an integer", bool: "true or false"}


def _batch_value_ok(key: str, value: Any) -> bool:
    want = BATCH_KEYS[key][1]
    if value is None:                       # null: the default (nic and the target are checked as required)
        return True
    if key == "addresses" and isinstance(value, list):
        return all(isinstance(a, str) for a in value)
    return isinstance(value, want) and not (want is int and isinstance(value, bool))


def read_batch(path: str) -> List[Any]:
    """The attach requests of a ``--batch`` file (``-``: standard input): a JSON array of objects with the keys
    of :data:`BATCH_KEYS`; ``nic`` and ``to`` are required. Every item is checked before anything is done."""
    import json

    from ..errors import InputError
    from ..request import AttachRequest
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path) as f:
                text = f.read()
        items = json.loads(text)
    except OSError as exc:
        raise InputError(f"--batch {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise InputError(f"--batch {path}: not JSON ({exc})") from exc
    if not isinstance(items, list) or not items:
        raise InputError(f"--batch {path}: expected a non-empty JSON array of attach requests")
    requests = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise InputError(f"--batch item {n}: expected an object, got {type(item).__name__}")
        unknown = sorted(set(item) - set(BATCH_KEYS))
        if unknown:
            raise InputError(f"--batch item {n}: unknown key {unknown[0]!r} (known: {', '.join(sorted(BATCH_KEYS))})")
        if "to" in item and "target" in item:
            raise InputError(f"--batch item {n}: give 'to' or 'target', not both")
        if not item.get("nic"):
            raise InputError(f"--batch item {n}: 'nic' is required (a string)")
        if not (item.get("to") or item.get("target")):
            raise InputError(f"--batch item {n}: 'to' is required (a string)")
        for key, value in item.items():
            if not _batch_value_ok(key, value):
                raise InputError(f"--batch item {n}: {key!r} must be {_KIND[BATCH_KEYS[key][1]]}"
                                 + (" or a list of strings" if key == "addresses" else "") + f", not {value!r}")
        values = {BATCH_KEYS[k][0]: v for k, v in item.items() if v is not None}
        if isinstance(values.get("addresses"), str):
            values["addresses"] = [values["addresses"]]
        try:
            requests.append(AttachRequest(**values))
        except InputError as exc:
            raise InputError(f"--batch item {n}: {exc.message}", exc.hint) from None
    nics = [r.nic for r in requests]
    twice = sorted({x for x in nics if nics.count(x) > 1})
    if twice:
        raise InputError(f"--batch {path}: {twice[0]} is asked for more than once")
    return requests


def cmd_attach_batch(args: argparse.Namespace) -> int:
    """``attach --batch FILE``: every request at once (handoff.attach_many); with --atomic, NICs attached before
    one failed are released again."""
    import dataclasses

    from .. import handoff
    from ..errors import Error
    requests = [dataclasses.replace(r, dry_run=args.dry_run) for r in read_batch(args.batch)]
    results = handoff.attach_many(requests, atomic=args.atomic)
    failed = [(r, x) for r, x in zip(requests, results) if isinstance(x, Error)]
    again = [not isinstance(x, Error) and bool(x.params.pop("released_again", False)) for x in results]
    if args.json:
        _emit([{"nic": r.nic, "error": str(x), "exit_code": x.exit_code} if isinstance(x, Error)
               else dict(x.to_dict(), released_again=a) for r, x, a in zip(requests, results, again)])
    else:
        for r, x, a in zip(requests, results, again):
            if isinstance(x, Error):
                print(f"dpdkeni: error: {r.nic}: {x}", file=sys.stderr)
            else:
                print(_attached(x, "planned" if args.dry_run else "attached")
                      + (" (released again: --atomic)" if a else ""))
        if failed:
            print(f"dpdkeni: {len(failed)} of {len(requests)} failed"
                  + (f"; {sum(again)} attached ones released again (--atomic)" if args.atomic else ""),
                  file=sys.stderr)
    return max((x.exit_code for _, x in failed), default=0)


def cmd_attach(args: argparse.Namespace) -> int:
    from .. import handoff
    from ..errors import InputError
    from ..request import AttachRequest
    if args.batch:
        if args.nic or args.to:
            raise InputError("--batch takes the NICs and targets from its file: give no NIC and no --to")
        return cmd_attach_batch(args)
    if not args.nic or not args.to:
        raise InputError("attach needs a NIC and --to TARGET (or --batch FILE)")
    if args.atomic:
        raise InputError("--atomic is for --batch")
    req = AttachRequest(nic=args.nic, target=args.to, mode=args.mode, ifname=args.ifname, addresses=args.address,
                        gateway=args.gateway, mtu=args.mtu, dhcp=args.dhcp, hugepages=args.hugepages,
                        driver=args.driver, noiommu=args.noiommu, force=args.force, dry_run=args.dry_run,
                        table=args.table)
    lease = handoff.attach(req.nic, req.target, **req.kwargs())
    if args.json:
        _emit(lease.to_dict())
    elif args.dry_run:
        print(f"plan for {lease.key} -> {lease.target} (dry run, nothing changed):")
        for line in lease.params.get("plan", []):
            print(f"  {line}")
    else:
        print(_attached(lease))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from .. import handoff
    from ..errors import Error
    if len(args.nic) > 1:
        results = handoff.release_many(args.nic, force=args.force)
        if args.json:
            _emit([{"nic": n, "error": str(x), "exit_code": x.exit_code} if isinstance(x, Error)
                   else (x.to_dict() if x else None) for n, x in zip(args.nic, results)])
        for n, x in zip(args.nic, results):
            if isinstance(x, Error):
                print(f"dpdkeni: error: {n}: {x}", file=sys.stderr)
            elif not args.json:
                _say_released(n, x)
        return max((x.exit_code for x in results if isinstance(x, Error)), default=0)
    lease = handoff.release(args.nic[0], force=args.force)
    if args.json:
        _emit(lease.to_dict() if lease else None)
    else:
        _say_released(args.nic[0], lease)
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from .. import handoff
    actions = handoff.recover()
    if args.json:
        _emit(actions)
    else:
        for a in actions:
            print(f"{a['key']}: {a['action']} ({a['detail']})")
        if not actions:
            print("no leases; nothing to recover", file=sys.stderr)
    return 1 if any(a["action"] == "failed" for a in actions) else 0


def lease_row(lease: Dict[str, Any]) -> List[str]:
    """One row of ``dpdkeni leases``: NIC, mode, state, target, name inside, addresses, since, original name."""
    params, original = lease.get("params") or {}, lease.get("original") or {}
    inside = params.get("ifname", "-") if lease["mode"] == "netdev" else params.get("driver", "vfio-pci")
    addrs = ",".join(params.get("addresses") or []) or ("dhcp" if params.get("dhcp") else "-")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.get("created", 0)))
    return [lease["key"], lease["mode"], lease["state"], lease["target"], inside, addrs, since,
            original.get("ifname") or "-"]


def cmd_leases(args: argparse.Namespace) -> int:
    from ..ledger import Ledger
    leases = [lease.to_dict() for _, lease in sorted(Ledger().leases().items())]
    if args.json:
        _emit(leases)
        return 0
    if not leases:
        print("no leases", file=sys.stderr)
        return 0
    rows = [["NIC", "MODE", "STATE", "TARGET", "AS", "ADDRESSES", "SINCE", "WAS"]] + [lease_row(x) for x in leases]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``attach``, ``release``, ``recover`` and ``leases``."""
    p = sub.add_parser("attach", help="hand a NIC to a container (kernel interface or DPDK port)")
    p.add_argument("nic", metavar="NIC", nargs="?", help="PCI address, MAC or interface name")
    p.add_argument("--to", metavar="TARGET", help="pid:N, netns:NAME, container:ID or a path to a netns file")
    p.add_argument("--batch", metavar="FILE",
                   help="attach many NICs at once: a JSON array of {nic, to, and any of mode, ifname, addresses, "
                        "gateway, mtu, dhcp, table, hugepages, driver, noiommu, force} ('-': stdin)")
    p.add_argument("--atomic", action="store_true",
                   help="with --batch: if any NIC fails, release the ones attached (all or nothing)")
    p.add_argument("--mode", choices=models.MODES, default="netdev")
    p.add_argument("--ifname", default="eth0", help="name inside the container (default eth0)")
    p.add_argument("--address", action="append", default=[], metavar="CIDR", help="address to add (repeatable)")
    p.add_argument("--gateway", metavar="IP", help="default route (onlink when outside the subnet)")
    p.add_argument("--mtu", type=int)
    p.add_argument("--dhcp", action="store_true", help="address, routes and MTU from DHCP, renewed while attached")
    p.add_argument("--table", type=int, default=None,
                   help="route table with a rule per address (default: automatic for a second NIC; 0: never)")
    p.add_argument("--hugepages", metavar="SIZE", help="dpdk mode: hugepages for the container, like 256M")
    p.add_argument("--driver", default="vfio-pci", choices=models.USER_DRIVERS,
                   help="dpdk mode: user-space driver (default vfio-pci)")
    p.add_argument("--noiommu", action="store_true", help="dpdk mode: allow vfio's unsafe no-IOMMU mode")
    p.add_argument("--force", action="store_true", help="override the guards")
    p.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_attach)
    p = sub.add_parser("release", help="take a NIC back to the host as it was")
    p.add_argument("nic", metavar="NIC", nargs="+", help="PCI address, MAC or original interface name (several: "
                                                            "released together)")
    p.add_argument("--force", action="store_true",
                   help="when the original name is taken on the host, return the NIC under another name")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_release)
    p = sub.add_parser("recover", help="finish or undo what a crash left half-done")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_recover)
    p = sub.add_parser("leases", help="which NIC is handed to which target (the ledger)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout (the leases as recorded)")
    p.set_defaults(func=cmd_leases)
