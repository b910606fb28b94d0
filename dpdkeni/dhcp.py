"""DHCP for a handed-over NIC: pyroute2's DHCP client, run in a process of our own inside the target's namespace.

The seed ran ``dhclient`` in the container's netns and forgot it. Here the client is ``python -m dpdkeni.dhcp``:
it enters the namespace, gets a lease (address, default route, MTU; DNS servers recorded in the lease), keeps it
renewed, and on SIGTERM sends DHCPRELEASE and removes what it configured. Its pid and start time are kept with the
lease's ``dhcp`` step, so release stops exactly that process (never a reused pid) and ``recover`` restarts it
when it died. pyroute2's client is used because it is the netlink library we already depend on, it does the
whole RFC 2131 state machine (renew at T1, rebind at T2, release on exit) and exposes hooks for configuration.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Optional

import psutil

from . import cancel, statedir
from .errors import Error
from .ledger import Lease, Ledger

log = logging.getLogger(__name__)

BOUND_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
RTNH_F_ONLINK = 4


# --- the parent side: start, stop, check -------------------------------------------------------------------------

def _log_path(ledger: Ledger, key: str) -> str:
    return os.path.join(ledger.directory, "dhcp-" + re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".log")


def start(lease: Lease, target: Any, ifname: str, timeout: Optional[float] = None) -> Dict[str, Any]:
    """Start the client for ``ifname`` in ``target``'s namespace and wait until it is bound (``timeout``:
    :data:`BOUND_TIMEOUT`, read at call time).

    Returns what stop needs (pid, start time). Raises Error (and leaves no process) when no lease came."""
    timeout = BOUND_TIMEOUT if timeout is None else timeout
    ledger = Ledger()
    statedir.ensure(ledger.directory)
    rfd, wfd = os.pipe()
    with statedir.opened(_log_path(ledger, lease.key), os.O_WRONLY | os.O_CREAT | os.O_APPEND, text=False) as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dpdkeni.dhcp", "--netns", target.path, "--ifname", ifname, "--key", lease.key,
             "--state-dir", ledger.directory, "--ready-fd", str(wfd)],
            pass_fds=(wfd,), start_new_session=True, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    os.close(wfd)
    info = {"pid": proc.pid, "started": psutil.Process(proc.pid).create_time()}
    _remember(ledger, lease.key, info)  # before waiting: a crash from here on still knows what to stop
    try:
        line = _read_ready(rfd, timeout)
    except BaseException:  # cancelled (the daemon's unplug or the target's death won): no client left behind
        _terminate(proc.pid, None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1)
        raise
    finally:
        os.close(rfd)
    if not line.startswith("bound"):
        _terminate(proc.pid, None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1)
        raise Error(f"no DHCP lease for {ifname} within {timeout:.0f} s" if not line else line,
                    f"is a DHCP server reachable from {target.spec}? see {_log_path(ledger, lease.key)}")
    return {**info, "bound": line.split()[1:]}


def _remember(ledger: Ledger, key: str, info: Dict[str, Any]) -> None:
    with ledger.transaction() as leases:
        step = leases[key].step("dhcp") if key in leases else None
        if step is not None:
            step.undo.update(info)


def _read_ready(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not cancel.wait_readable(fd, left):  # Cancelled when the handoff is given up
            return ""
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _client(lease: Lease) -> Optional[psutil.Process]:
    """The running client of this lease, or None (not started, exited, or the pid now belongs to another)."""
    step = lease.step("dhcp")
    info = step.undo if step else {}
    if not info.get("pid"):
        return None
    try:
        proc = psutil.Process(info["pid"])
        if abs(proc.create_time() - info.get("started", 0)) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.Error:
        return None


def _terminate(pid: int, started: Optional[float]) -> None:
    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 1:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    except psutil.Error:
        pass


def stop(lease: Lease) -> None:
    """Stop the lease's client: it sends DHCPRELEASE and removes its address and route, then exits."""
    proc = _client(lease)
    if proc is not None:
        _terminate(proc.pid, proc.create_time())


def running(lease: Lease) -> bool:
    """Whether the lease's client is alive."""
    return _client(lease) is not None


def ensure_running(lease: Lease, ledger: Ledger) -> bool:
    """Restart the client of an attached lease when it died (``recover``). True when one was started."""
    if running(lease):
        return False
    from .modes import target_of
    _remember(ledger, lease.key, start(lease, target_of(lease), lease.params.get("ifname", "eth0")))
    return True


# --- the client process ---------------------------------------------------------------------------------------------

def _record(state_dir: str, key: str, values: Dict[str, Any]) -> None:
    with Ledger(state_dir).transaction() as leases:
        if key in leases:
            current = leases[key].params.get("dhcp_lease") or {}
            renewals = current.get("renewals", -1) + 1 if current.get("ip") == values.get("ip") else 0
            leases[key].params["dhcp_lease"] = {**values, "renewals": renewals}


def _lease_values(dl: Any) -> Dict[str, Any]:
    def opt(name: str) -> Any:
        try:
            return getattr(dl, name)
        except LookupError:
            return None

    return {"ip": dl.ip, "prefixlen": dl.prefixlen, "gateway": (opt("routers") or [None])[0],
            "dns": opt("name_servers") or [], "mtu": opt("mtu"), "lease_time": opt("lease_time"),
            "server": opt("server_id"), "obtained": dl.obtained}


def _hooks(ifname: str, state_dir: str, key: str, applied: asyncio.Event) -> list:
    from pyroute2.dhcp.hooks import Trigger, hook
    from pyroute2.iproute.linux import AsyncIPRoute

    async def apply(lease: Any) -> None:
        v = _lease_values(lease)
        async with AsyncIPRoute() as ipr:
            link = (await ipr.link("get", ifname=ifname))[0]
            idx = link["index"]
            if v["mtu"] and link.get_attr("IFLA_MTU") != v["mtu"]:
                await ipr.link("set", index=idx, mtu=v["mtu"])
            await ipr.addr("replace", index=idx, address=v["ip"], prefixlen=v["prefixlen"])
            if v["gateway"]:
                net = ipaddress.ip_interface(f"{v['ip']}/{v['prefixlen']}").network
                flags = 0 if ipaddress.ip_address(v["gateway"]) in net else RTNH_F_ONLINK
                await ipr.route("replace", dst="0.0.0.0/0", gateway=v["gateway"], oif=idx, flags=flags)
        _record(state_dir, key, v)
        applied.set()

    async def remove(lease: Any) -> None:
        v = _lease_values(lease)
        async with AsyncIPRoute() as ipr:
            with contextlib.suppress(Exception):
                link = (await ipr.link("get", ifname=ifname))[0]
                await ipr.addr("del", index=link["index"], address=v["ip"], prefixlen=v["prefixlen"])

    return [hook(Trigger.BOUND, Trigger.RENEWED, Trigger.REBOUND)(apply),
            hook(Trigger.UNBOUND, Trigger.EXPIRED)(remove)]


async def _run(args: argparse.Namespace) -> int:
    from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
    from pyroute2.dhcp.enums import dhcp as dhcp_enums
    from pyroute2.dhcp.leases import JSONStdoutLease

    class NoFileLease(JSONStdoutLease):
        """The lease lives in our ledger (written by the hooks), not in a file or on stdout."""

        def dump(self) -> None:
            pass

    applied = asyncio.Event()
    cfg = ClientConfig(interface=args.ifname, lease_type=NoFileLease,
                       hooks=_hooks(args.ifname, args.state_dir, args.key, applied), handle_signals=True, release=True,
                       hook_timeout=5.0,
                       requested_parameters=(*ClientConfig.requested_parameters,
                                             dhcp_enums.Option.INTERFACE_MTU))
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_event.set)
    async with AsyncDHCPClient(cfg) as client:
        watch = asyncio.create_task(_watch_link(args.ifname, stop_event))
        await client.bootstrap()
        # bound, stopped (SIGTERM while still selecting: the daemon gave the attach up) or out of time
        bound, stopped = asyncio.create_task(applied.wait()), asyncio.create_task(stop_event.wait())
        await asyncio.wait((bound, stopped), timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in (bound, stopped):
            task.cancel()
        if not applied.is_set():
            watch.cancel()
            if stop_event.is_set():
                log.info("stopped before a lease was bound")
                return 0
            os.write(args.ready_fd, f"error: no DHCP lease for {args.ifname} within {args.timeout:.0f} s\n".encode())
            return 1
        os.write(args.ready_fd, f"bound {client.lease.ip}/{client.lease.prefixlen}\n".encode())
        os.close(args.ready_fd)
        await stop_event.wait()
        watch.cancel()
    return 0


async def _watch_link(ifname: str, stop_event: asyncio.Event, period: float = 2.0) -> None:
    """Stop when the interface is gone (the NIC left the namespace, or the namespace died with the container),
    so no client outlives its NIC."""
    from pyroute2.iproute.linux import AsyncIPRoute

    while not stop_event.is_set():
        await asyncio.sleep(period)
        async with AsyncIPRoute() as ipr:
            if not await ipr.link_lookup(ifname=ifname):
                log.info("%s is gone; stopping", ifname)
                stop_event.set()


def main(argv: Optional[list] = None) -> int:
    """Entry point of the client process (``python -m dpdkeni.dhcp``)."""
    ap = argparse.ArgumentParser(prog="dpdkeni-dhcp", description="DHCP client for a NIC handed to a container")
    ap.add_argument("--netns", required=True)
    ap.add_argument("--ifname", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--ready-fd", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=BOUND_TIMEOUT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from pyroute2 import netns
    netns.setns(args.netns, flags=0)  # flags=0: never create a namespace by accident
    try:
        return asyncio.run(_run(args))
    except Exception as exc:  # the parent reads this line and reports it as the step's error
        with contextlib.suppress(OSError):
            os.write(args.ready_fd, f"error: DHCP client: {exc}\n".encode())
        raise


if __name__ == "__main__":
    sys.exit(main())
