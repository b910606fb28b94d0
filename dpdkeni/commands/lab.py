"""``dpdkeni lab build|demo|run``: the QEMU hot-plug lab."""
from __future__ import annotations

import argparse
import sys


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _say(msg: str) -> None:
    print(msg, flush=True)


def cmd_build(args: argparse.Namespace) -> int:
    from ..lab.image import ensure_image
    image = ensure_image(_progress, rebuild=args.rebuild)
    print(image.dir)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..lab.demo import run_demo
    run_demo(_say, _progress)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..lab import Lab
    with Lab(progress=_progress) as lab:
        result = lab.run(args.argv, timeout=args.timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc if result.rc is not None else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``lab``."""
    p = sub.add_parser("lab", help="the QEMU hot-plug lab (real virtio-net/e1000 hot-plug, vfio, DPDK)")
    lab = p.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    lab.required = True
    b = lab.add_parser("build", help="build (or reuse) the guest image; prints its cache directory")
    b.add_argument("--rebuild", action="store_true", help="build again even when cached")
    b.set_defaults(func=cmd_build)
    d = lab.add_parser("demo", help="boot the lab and play the narrated hot-plug scenario")
    d.set_defaults(func=cmd_demo)
    r = lab.add_parser("run", help="boot the lab, run one command in the guest, stop")
    r.add_argument("--timeout", type=float, default=120.0, help="seconds the command may take")
    r.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command to run in the guest")
    r.set_defaults(func=cmd_run)
