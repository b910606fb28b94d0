"""``dpdkeni cni serve``: the resident CNI plugin (dpdkeni-cni hands its calls to it)."""
from __future__ import annotations

import argparse


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import sys
    from ..cni_server import CniServer
    if args.socket is not None:
        from ..validate import socket_path
        socket_path(args.socket)  # '' would mean the default socket
    server = CniServer(args.socket)
    server.open()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop.set())
    print(f"dpdkeni: cni server listening on {server.path}", file=sys.stderr, flush=True)
    server.serve()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``cni``."""
    p = sub.add_parser("cni", help="the CNI plugin's resident server")
    cs = p.add_subparsers(dest="cni_command", metavar="CNI_COMMAND")
    cs.required = True
    s = cs.add_parser("serve", help="serve dpdkeni-cni calls on a unix socket (pod starts skip Python's start-up)")
    s.add_argument("--socket", default=None,
                   help="where to listen (default $DPDKENI_CNI_SOCKET or <state dir>/cni.sock)")
    s.set_defaults(func=cmd_serve)
