"""``dpdkeni watch``, ``dpdkeni wait``, ``dpdkeni daemon`` and ``dpdkeni udev rules|hook``."""
from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("dpdkeni")
STOP_CHECK_S = 0.2
UNIT_PATH = "/etc/systemd/system/dpdkeni.service"


def cmd_watch(args: argparse.Namespace) -> int:
    import signal
    import threading

    from ..events import Watcher
    # Ctrl-C / SIGTERM only set a flag: a KeyboardInterrupt raised at an arbitrary point (inside a netlink
    # query) could leave a half-closed socket behind and hang the exit; poll() wakes within STOP_CHECK_S.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Watcher(args.source, all=args.all, existing=args.existing) as watcher:
        log.info("watching NIC events (source %s); Ctrl-C to stop", watcher.source)
        while not stop.is_set():
            for event in watcher.poll(STOP_CHECK_S):
                line = json.dumps(event.to_dict(), sort_keys=True, default=str) if args.json else str(event)
                print(line, flush=True)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    from ..events import wait_for_nic
    try:
        nic = wait_for_nic(mac=args.mac, pci=args.pci, timeout=args.timeout, source=args.source, all=args.all)
    except KeyboardInterrupt:
        return 130
    if args.json:
        from ..cli import emit_json
        emit_json(nic.to_dict())
    else:
        print(" ".join(f"{k}={v}" for k, v in (("pci", nic.pci), ("if", nic.ifname), ("mac", nic.mac),
                                                ("drv", nic.driver)) if v))
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    import signal

    from ..daemon import Daemon
    from ..daemon_status import check_metrics_path
    from ..errors import InputError
    from ..events import Watcher
    from ..policy import describe, load
    if getattr(args, "daemon_command", None) == "status":
        return cmd_daemon_status(args)
    if not args.policy:
        raise InputError("the daemon needs --policy FILE", "or 'dpdkeni daemon status' to ask the running one")
    policy = load(args.policy)  # an invalid policy: one line naming file:line, exit 2, nothing started
    if args.metrics:
        check_metrics_path(args.metrics)
    for line in describe(policy.rules):
        log.info("rule %s", line)
    daemon = Daemon(policy, watcher=Watcher(args.source, all=args.all, existing=True), metrics=args.metrics)
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop; the NICs stay where they are
        signal.signal(sig, lambda *_: daemon.stop.set())
    signal.signal(signal.SIGHUP, lambda *_: daemon.reload.set())  # re-read the policy (a bad one is ignored)
    daemon.serve()  # another daemon on this state dir: GuardError, one line, exit 3
    return 0


def _ago(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d {s % 86400 // 3600}h" if s >= 86400 else f"{s // 3600}h {s % 3600 // 60}m" \
        if s >= 3600 else f"{s // 60}m {s % 60}s" if s >= 60 else f"{seconds:.1f}s"


def cmd_daemon_status(args: argparse.Namespace) -> int:
    from .. import statedir
    from ..daemon_status import query
    from ..errors import InputError
    if not 0 <= args.last <= 1000:
        raise InputError(f"--last {args.last}: give 0 to 1000 decisions")
    doc = query(statedir.path(), last=args.last)
    if args.json:
        from ..cli import emit_json
        emit_json(doc)
        return 0
    c = doc["counters"]
    print(f"daemon pid {doc['pid']}, up {_ago(doc['uptime_s'])}, state {doc['state']}, policy {doc['policy']}")
    print("counters: " + " ".join(f"{k}={c[k]}" for k in ("events", "attached", "failed", "released", "reclaimed")))
    mem = doc.get("memory") or {}
    if mem:
        print(f"memory: RSS {mem.get('rss_kib', 0) / 1024:.1f} MiB, freed heap returned {mem.get('trims', 0)} times")
    print(f"rules ({len(doc['rules'])}):")
    for line in doc["rules"]:
        print(f"  {line}")
    print(f"leases ({len(doc['leases'])}):")
    for lease in doc["leases"]:
        print(f"  {lease['nic']} {lease['mode']} -> {lease['target']} ({lease['state']})")
    print(f"waiting ({len(doc['waiting'])}):")
    for w in doc["waiting"]:
        print(f"  {w['nic']} rule {w['rule']}: {w['why']}")
    if doc["busy"]:
        print("at work: " + " ".join(doc["busy"]))
    print(f"last decisions ({len(doc['decisions'])}):")
    for d in doc["decisions"]:
        print("  " + d["decision"] + ": " + " ".join(f"{k}={v}" for k, v in d.items() if k != "decision"))
    return 0


def cmd_udev_rules(args: argparse.Namespace) -> int:
    from .. import udev
    text = udev.rules_text()
    if args.install:
        print(f"wrote {udev.install_rules(text, args.path)}", file=sys.stderr)
        print("udev reads it at once; for the daemon as a service: install examples/systemd/dpdkeni.service as "
              f"{UNIT_PATH}, then 'systemctl daemon-reload && systemctl enable --now dpdkeni'", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_udev_hook(args: argparse.Namespace) -> int:
    from .. import udev
    return udev.hook_main()


def _source_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=("auto", "udev", "kernel"), default="auto",
                   help="uevent source: udev (after udevd renamed the device), kernel (works without udevd); "
                        "auto picks udev when udevd runs")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``watch``, ``wait``, ``daemon`` and ``udev``."""
    p = sub.add_parser("watch", help="print NIC events (added/removed/bound/moved) until Ctrl-C")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--all", action="store_true", help="every network device, virtual ones included")
    p.add_argument("--existing", action="store_true", help="first report the NICs already present as added")
    _source_arg(p)
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("wait", help="wait until a NIC is present and named (already present counts)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--mac", help="the NIC's MAC address")
    g.add_argument("--pci", help="the NIC's PCI address")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30); exit 1 when it passes")
    p.add_argument("--all", action="store_true", help="let virtual devices count too (tests)")
    p.add_argument("--json", action="store_true", help="the NIC as one JSON document")
    _source_arg(p)
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("daemon", help="apply a policy to NICs as they appear; reclaim them when containers die")
    p.add_argument("--policy", help="rules file (TOML, or JSON by the .json extension); required to serve")
    p.add_argument("--all", action="store_true", help="let virtual devices match rules too (tests)")
    p.add_argument("--metrics", metavar="FILE", help="write the counters to FILE (*.prom, node_exporter's textfile "
                   "format) every few seconds, atomically")
    _source_arg(p)
    p.set_defaults(func=cmd_daemon)
    dsub = p.add_subparsers(dest="daemon_command", metavar="[status]",
                            help="without it: serve (needs --policy)")
    q = dsub.add_parser("status", help="ask the running daemon: uptime, rules, leases, waiting NICs, decisions, "
                        "counters")
    q.add_argument("--json", action="store_true", help="one JSON document")
    q.add_argument("--last", type=int, default=20, help="how many of the last decisions (default 20)")
    q.set_defaults(func=cmd_daemon_status)

    p = sub.add_parser("udev", help="udev rules and the hook they run")
    usub = p.add_subparsers(dest="udev_command", metavar="SUBCOMMAND")
    usub.required = True
    q = usub.add_parser("rules", help="print the rules (or --install them)")
    q.add_argument("--install", action="store_true", help="write them to /etc/udev/rules.d/90-dpdkeni.rules")
    q.add_argument("--path", default="/etc/udev/rules.d/90-dpdkeni.rules", help=argparse.SUPPRESS)
    q.set_defaults(func=cmd_udev_rules)
    q = usub.add_parser("hook", help="(run by udev) hand the event in the environment to the daemon")
    q.set_defaults(func=cmd_udev_hook)
