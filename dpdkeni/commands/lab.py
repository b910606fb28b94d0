"""``dpdkeni lab build|demo|run|up|plug|unplug|exec|nics|down``: the QEMU hot-plug lab."""
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


def _command(argv: list) -> list:
    """The guest command after ``--`` (argparse keeps the separator in a REMAINDER)."""
    argv = argv[1:] if argv[:1] == ["--"] else argv
    if not argv:
        from ..errors import InputError
        raise InputError("no command given", "put it after --: dpdkeni lab exec -- ip -br link")
    return argv


def cmd_run(args: argparse.Namespace) -> int:
    from ..lab import Lab
    argv = _command(args.argv)
    with Lab(progress=_progress) as lab:
        result = lab.run(argv, timeout=args.timeout)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.rc if result.rc is not None else 1


def cmd_up(args: argparse.Namespace) -> int:
    import signal
    from ..lab import Lab
    from ..lab.control import ControlServer
    lab = Lab(progress=_progress)
    server = ControlServer(lab, args.socket)
    server.open()  # before booting: a second lab on the same socket is refused at once
    lab.on_fault = lambda fault: server.stop.set()   # a wedged guest serves nobody: stop, say why, exit 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: server.stop.set())
        lab.start()
        _progress(f"lab up: kernel {lab.image.kernel_release}, this checkout at /opt/dpdkeni in the guest, "
                  f"control socket {server.path}\n"
                  "  dpdkeni lab plug virtio-net|e1000|e1000e [--mac MAC]   hot-plug a NIC, as a cloud attaches one\n"
                  "  dpdkeni lab exec -- COMMAND...                         run a command in the guest\n"
                  "  dpdkeni lab unplug NIC ; dpdkeni lab nics ; dpdkeni lab down (or Ctrl-C here)")
        server.serve()
    finally:
        server.close()
        lab.stop()
    if lab.fault is not None:
        raise lab.fault
    _progress("lab down")
    return 0


def _client(args: argparse.Namespace):
    from ..lab.control import ControlClient
    return ControlClient(args.socket)


def cmd_plug(args: argparse.Namespace) -> int:
    nic = _client(args).call("plug", model=args.model, mac=args.mac, id=args.id, timeout=args.timeout)
    if args.json:
        from ..cli import emit_json
        emit_json(nic)
    else:
        print(f"plugged {nic['model']} {nic['mac']} as {nic['pci']} {nic['ifname']} (id {nic['id']}, "
              f"{nic['seconds']:.1f}s)")
    return 0


def cmd_unplug(args: argparse.Namespace) -> int:
    done = _client(args).call("unplug", nic=args.nic, timeout=args.timeout)
    print(f"unplugged {done['id']}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = _command(args.argv)
    out = _client(args).call("exec", argv=argv, timeout=args.timeout)
    sys.stdout.write(out["stdout"])
    sys.stderr.write(out["stderr"])
    return out["rc"] if out["rc"] is not None else 1


def cmd_nics(args: argparse.Namespace) -> int:
    nics = _client(args).call("nics")
    if args.json:
        from ..cli import emit_json
        emit_json(nics)
    for n in [] if args.json else nics:
        print(f"{n['id']}  {n['model']}  {n['mac']}  {n['pci'] or '-'}  {n['ifname'] or '-'}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _client(args).call("down")
    print("lab stopping")
    return 0


def _control(lab: argparse._SubParsersAction, name: str, help: str, func) -> argparse.ArgumentParser:
    p = lab.add_parser(name, help=help)
    p.add_argument("--socket", default=None, help="the lab's control socket (default: in the lab cache)")
    p.set_defaults(func=func)
    return p


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
    _control(lab, "up", "boot the lab and keep it up for 'lab plug/unplug/exec' from other shells", cmd_up)
    p = _control(lab, "plug", "hot-plug a NIC into the running lab (QMP device_add)", cmd_plug)
    p.add_argument("model", choices=("virtio-net", "e1000", "e1000e"))
    p.add_argument("--mac", help="its MAC (default: a fresh one)")
    p.add_argument("--id", help="its QEMU device id (default: made up)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the guest to name it")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p = _control(lab, "unplug", "hot-unplug a NIC (device id, MAC or PCI address) from the running lab", cmd_unplug)
    p.add_argument("nic", metavar="NIC")
    p.add_argument("--timeout", type=float, default=60.0)
    p = _control(lab, "exec", "run a command in the running lab's guest", cmd_exec)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds the command may take")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    p = _control(lab, "nics", "the NICs plugged into the running lab", cmd_nics)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    _control(lab, "down", "stop the running lab", cmd_down)
