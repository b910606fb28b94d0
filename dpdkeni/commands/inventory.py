"""``dpdkeni list`` and ``dpdkeni doctor``."""
from __future__ import annotations

import argparse
from typing import Dict, Iterable, List, Optional

from .. import doctor
from ..errors import Error
from ..inventory import Nic, lease_key, list_nics


def _leased() -> Dict[str, str]:
    """Lease key -> target, from the ledger (a plain read: no netlink)."""
    from ..ledger import Ledger
    try:
        return {key: lease.target for key, lease in Ledger().leases().items()}
    except (Error, OSError, ValueError):  # an unreadable ledger must not break list
        return {}


def _nic_line(nic: Nic, leased: Optional[Dict[str, str]] = None) -> str:
    parts = [nic.pci or "-", f"'{nic.model} {nic.vendor}:{nic.device}'" if nic.pci else f"'{nic.model}'"]
    if nic.numa_node is not None:
        parts.append(f"numa_node={nic.numa_node}")
    if nic.iommu_group is not None:
        parts.append(f"iommu_group={nic.iommu_group}")
    parts.append(f"if={nic.ifname or '-'}")
    if nic.mac:
        parts.append(f"mac={nic.mac}")
    parts.append(f"drv={nic.driver or '-'}")
    if nic.unused:
        parts.append("unused=" + ",".join(nic.unused))
    if nic.operstate and nic.ifname:
        parts.append(f"state={nic.operstate}")
    if nic.active:
        parts.append("*Active*")
    target = (leased or {}).get(lease_key(nic))
    if target:
        parts.append(f"leased={target}")
    return " ".join(parts)


def format_table(nics: Iterable[Nic], leased: Optional[Dict[str, str]] = None) -> str:
    """Sections like ``dpdk-devbind --status``: managed NICs on DPDK drivers, on kernel drivers, others;
    ``leased`` (lease key -> target) marks the NICs handed to a target."""
    nics = list(nics)
    sections = [
        ("Network devices using DPDK-compatible driver", [n for n in nics if n.managed and n.on_dpdk_driver]),
        ("Network devices using kernel driver", [n for n in nics if n.managed and n.driver
                                                 and not n.on_dpdk_driver]),
        ("Managed network devices with no driver", [n for n in nics if n.managed and not n.driver]),
        ("Other network devices", [n for n in nics if not n.managed]),
    ]
    out: List[str] = []
    for title, rows in sections:
        if not rows and title.startswith(("Managed", "Other")):
            continue
        out += [title, "=" * len(title)]
        out += [_nic_line(n, leased) for n in rows] or ["<none>"]
        out.append("")
    return "\n".join(out).rstrip("\n")


def cmd_list(args: argparse.Namespace) -> int:
    nics = list_nics(all=args.all)
    if args.json:
        from ..cli import emit_json
        emit_json([n.to_dict() for n in nics])
    else:
        print(format_table(nics, _leased()))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor.run_checks()
    if args.json:
        from ..cli import emit_json
        emit_json([c.to_dict() for c in checks])
        return 0
    width = max(len(c.name) for c in checks)
    for c in checks:
        line = f"[{c.status:^4}] {c.name:<{width}}  {c.detail}"
        print(line + (f"\n       {'':<{width}}  -> {c.hint}" if c.hint and c.status != "ok" else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``list`` and ``doctor``."""
    p = sub.add_parser("list", help="the NICs of this host, grouped by driver")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--all", action="store_true", help="every network device, virtual ones included")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("doctor", help="what this host can do: vfio, IOMMU, hugepages, udevd, cgroups")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_doctor)
