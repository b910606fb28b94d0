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


def cmd_attach(args: argparse.Namespace) -> int:
    from .. import handoff
    lease = handoff.attach(args.nic, args.to, mode=args.mode, ifname=args.ifname, addresses=args.address,
                           gateway=args.gateway, mtu=args.mtu, dhcp=args.dhcp, hugepages=args.hugepages,
                           driver=args.driver, noiommu=args.noiommu, force=args.force, dry_run=args.dry_run,
                           table=args.table)
    if args.json:
        _emit(lease.to_dict())
    elif args.dry_run:
        print(f"plan for {lease.key} -> {lease.target} (dry run, nothing changed):")
        for line in lease.params.get("plan", []):
            print(f"  {line}")
    else:
        where = f" as {lease.params.get('ifname')}" if lease.mode == "netdev" else " (dpdk)"
        print(f"attached {lease.key} to {lease.target}{where}")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from .. import handoff
    lease = handoff.release(args.nic, force=args.force)
    if args.json:
        _emit(lease.to_dict() if lease else None)
    elif lease is None:
        print(f"{args.nic} is not leased; nothing to do", file=sys.stderr)
    else:
        print(f"released {lease.key} from {lease.target} ({lease.params.get('outcome', 'returned')})")
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
    p.add_argument("nic", metavar="NIC", help="PCI address, MAC or interface name")
    p.add_argument("--to", required=True, metavar="TARGET",
                   help="pid:N, netns:NAME, container:ID or a path to a netns file")
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
    p.add_argument("nic", metavar="NIC", help="PCI address, MAC or original interface name")
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
