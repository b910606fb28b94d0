"""``dpdkeni k8s device-plugin``: the kubelet device plugin that offers the node's NICs to DPDK pods."""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("dpdkeni")


def cmd_device_plugin(args: argparse.Namespace) -> int:
    import signal
    import threading

    from ..k8s import api, pools
    config = pools.load(args.config)  # an invalid file: one line naming file:line, exit 2, nothing started
    from ..k8s.plugin import DevicePlugin
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop serving; NICs pods hold stay bound (the next run adopts)
        signal.signal(sig, lambda *_: stop.set())
    plugin = DevicePlugin(config, args.plugin_dir or api.DEVICE_PLUGIN_PATH, source=args.source)
    plugin.start()
    print(f"dpdkeni: device plugin serving {', '.join(p.resource for p in config.pools)} in {plugin.dir}",
          file=sys.stderr, flush=True)
    plugin.serve(stop)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``k8s``."""
    p = sub.add_parser("k8s", help="the kubelet device plugin for DPDK NICs (hot-plug aware)")
    ks = p.add_subparsers(dest="k8s_command", metavar="K8S_COMMAND")
    ks.required = True
    d = ks.add_parser("device-plugin", help="offer the node's NICs to DPDK pods as extended resources "
                                            "(dpdkeni.io/<pool>), following hot-plug")
    d.add_argument("--config", required=True, metavar="FILE", help="the pools (TOML, or JSON by extension)")
    d.add_argument("--plugin-dir", metavar="DIR", default=None,
                   help="the kubelet's device-plugins dir (default /var/lib/kubelet/device-plugins/)")
    d.add_argument("--source", choices=("auto", "udev", "kernel"), default="auto", help="uevent source")
    d.set_defaults(func=cmd_device_plugin)
