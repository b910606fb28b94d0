"""``dpdkeni bind`` / ``unbind``, ``dpdkeni hugepages show|reserve|clear``, ``dpdkeni cdi generate``."""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from .. import models

if TYPE_CHECKING:
    from .. import driver

# the library modules are imported in the handlers: pyroute2 and psutil cost ~0.3 s to import, and every
# dpdkeni command (the udev hook too) builds this parser


def _print_writes(result: "driver.BindResult") -> None:
    for path, value in result.writes:
        print(f"{'would write' if result.dry_run else 'wrote'} {value.strip() or '(empty)'!r} to {path}")


def _emit(args: argparse.Namespace, obj: object) -> bool:
    if getattr(args, "json", False):
        from ..cli import emit_json
        emit_json(obj)
        return True
    return False


def _check_persist(args: argparse.Namespace) -> None:
    """--persist: the overrides directory must take the file before anything is bound (nothing half-done)."""
    if args.persist:
        from .. import overrides, safefile
        from ..errors import InputError
        if args.dry_run:
            raise InputError("--persist and --dry-run exclude each other")
        where = overrides.directory()
        if os.path.lexists(where) or where != overrides.DEFAULT:  # the default one is made when missing
            safefile.check_dir(where, "overrides directory")


def cmd_bind(args: argparse.Namespace) -> int:
    from .. import driver
    _check_persist(args)
    result = driver.bind(args.nic, args.driver, noiommu=args.noiommu, force=args.force, dry_run=args.dry_run)
    persisted = None
    if args.persist:
        from .. import overrides
        persisted = overrides.write(result.pci, args.driver)
    if not _emit(args, {**result.to_dict(), **({"override": persisted} if persisted else {})}):
        _print_writes(result) if args.dry_run else print(
            f"{result.pci}: {result.original_driver or 'no driver'} -> {result.driver}"
            + (f" (persistent: {persisted})" if persisted else ""))
    return 0


def cmd_unbind(args: argparse.Namespace) -> int:
    from .. import driver
    _check_persist(args)
    result = driver.unbind(args.nic, driver=args.driver, dry_run=args.dry_run)
    removed = False
    if args.persist:
        from .. import overrides
        removed = overrides.remove(result.pci)
    if not _emit(args, {**result.to_dict(), **({"override_removed": removed} if args.persist else {})}):
        _print_writes(result) if args.dry_run else print(
            f"{result.pci}: {result.original_driver or 'no driver'} -> {result.driver}"
            + (f" (if={result.ifname})" if result.ifname else "")
            + ((" (persistent binding removed)" if removed else " (no persistent binding)") if args.persist else ""))
    return 0


def cmd_overrides(args: argparse.Namespace) -> int:
    from .. import overrides
    entries = overrides.listing()
    if _emit(args, entries):
        return 0
    for e in entries:
        print(f"{e['pci']} {e['driver'] or '?'}" + (f"  ({e['error']})" if e.get("error") else ""))
    if not entries:
        print(f"no persistent bindings in {overrides.directory()}")
    return 0


def cmd_hp_show(args: argparse.Namespace) -> int:
    from .. import hugepages
    pools = hugepages.status()
    if _emit(args, [p.to_dict() for p in pools]):
        return 0
    print(f"{'node':>5} {'pagesize':>9} {'total':>7} {'free':>7} {'surplus':>8}")
    for p in pools:
        print(f"{'-' if p.node is None else p.node:>5} {hugepages.format_size(p.page_bytes):>9} "
              f"{p.total:>7} {p.free:>7} {p.surplus:>8}")
    for m in hugepages.mounts():
        print(f"hugetlbfs {m['path']} {m['options']}")
    return 0


def cmd_hp_reserve(args: argparse.Namespace) -> int:
    from .. import hugepages
    page = hugepages.parse_size(args.pagesize)
    if (args.size is None) == (args.pages is None):
        from ..errors import InputError
        raise InputError("give either SIZE or --pages N")
    count = args.pages if args.pages is not None else hugepages.pages_for(args.size, page)
    got = hugepages.set_pages(count, page, args.node)
    print(f"{got} pages of {hugepages.format_size(page)} reserved"
          + (f" on node {args.node}" if args.node is not None else ""))
    return 0


def cmd_hp_clear(args: argparse.Namespace) -> int:
    from .. import hugepages
    for pool in hugepages.status():
        if pool.node is None:
            hugepages.set_pages(0, pool.page_bytes, None)
    print("hugepages cleared")
    return 0


def cmd_cdi_generate(args: argparse.Namespace) -> int:
    from .. import cdi
    spec = cdi.generate(hugepages=args.hugepages, prefix=args.prefix, resource=args.resource,
                        cdi_version=args.cdi_version)
    if args.stdout:
        from ..cli import emit_json
        emit_json(spec)
        return 0
    path = cdi.write(spec, args.output)
    print(f"wrote {path} ({len(spec['devices'])} device(s))")
    return 0


def _register_bind(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bind", help="bind a NIC to vfio-pci or uio_pci_generic (guards first)")
    p.add_argument("nic", metavar="NIC", help="PCI address, MAC or interface name")
    p.add_argument("--driver", default="vfio-pci", choices=models.USER_DRIVERS)
    p.add_argument("--noiommu", action="store_true", help="allow vfio's unsafe no-IOMMU mode (no DMA isolation)")
    p.add_argument("--force", action="store_true", help="override the guards")
    p.add_argument("--dry-run", action="store_true", help="print the exact writes, change nothing")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--persist", action="store_true", help="also at every boot and re-plug (writes "
                   "/etc/dpdkeni/overrides/pci-<bdf>, applied by the udev rules)")
    p.set_defaults(func=cmd_bind)
    p = sub.add_parser("unbind", help="give a NIC back to its kernel driver under its original name")
    p.add_argument("nic", metavar="NIC", help="PCI address, MAC or interface name")
    p.add_argument("--driver", default=None, help="the kernel driver (default: the one it had, else the model's)")
    p.add_argument("--dry-run", action="store_true", help="print the exact writes, change nothing")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--persist", action="store_true", help="also remove its persistent binding")
    p.set_defaults(func=cmd_unbind)
    p = sub.add_parser("overrides", help="list the persistent driver bindings (bind --persist)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_overrides)


def _register_hugepages(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hugepages", help="show, reserve or clear hugepages")
    hs = p.add_subparsers(dest="hp_command", metavar="ACTION")
    hs.required = True
    s = hs.add_parser("show", help="pools per page size and NUMA node, and hugetlbfs mounts")
    s.add_argument("--json", action="store_true", help="one JSON document on stdout")
    s.set_defaults(func=cmd_hp_show)
    s = hs.add_parser("reserve", help="set the pool to SIZE (256M, 1G) or --pages N")
    s.add_argument("size", metavar="SIZE", nargs="?", help="total size, e.g. 256M or 1G")
    s.add_argument("--pagesize", default="2M", help="2M (default) or 1G")
    s.add_argument("--node", type=int, default=None, help="NUMA node (default: the system-wide pool)")
    s.add_argument("--pages", type=int, default=None, help="a page count instead of SIZE")
    s.set_defaults(func=cmd_hp_reserve)
    s = hs.add_parser("clear", help="release every reserved hugepage")
    s.set_defaults(func=cmd_hp_clear)


def _register_cdi(sub: argparse._SubParsersAction) -> None:
    from .. import cdi
    p = sub.add_parser("cdi", help="Container Device Interface specs for vfio NICs")
    cs = p.add_subparsers(dest="cdi_command", metavar="ACTION")
    cs.required = True
    s = cs.add_parser("generate", help=f"write a CDI spec for every vfio NIC (default {cdi.DEFAULT_PATH})")
    s.add_argument("--output", "-o", default=cdi.DEFAULT_PATH, help="where to write the spec")
    s.add_argument("--stdout", action="store_true", help="print the spec instead of writing it")
    s.add_argument("--hugepages", default="256M", help="size limit of the hugetlbfs mount (default 256M)")
    s.add_argument("--prefix", default=cdi.DEFAULT_PREFIX, help="resource prefix for PCIDEVICE_* env vars")
    s.add_argument("--resource", default=cdi.DEFAULT_RESOURCE, help="resource name for PCIDEVICE_* env vars")
    s.add_argument("--cdi-version", default=cdi.CDI_VERSION, choices=cdi.CDI_VERSIONS,
                   help="cdiVersion to write (0.5.0 for podman 4.3 as in Debian 12; same content)")
    s.set_defaults(func=cmd_cdi_generate)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bind``, ``unbind``, ``hugepages`` and ``cdi``."""
    _register_bind(sub)
    _register_hugepages(sub)
    _register_cdi(sub)
