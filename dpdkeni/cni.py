"""``dpdkeni-cni``: a CNI plugin (spec 0.3.0 to 1.1.0) that hands a host NIC to a pod, as a kernel interface or
as a DPDK port, through :func:`dpdkeni.handoff.attach` / :func:`~dpdkeni.handoff.release`.

It reads host-device's keys (``device``, ``hwaddr``, ``kernelpath``, ``pciBusID``, ``runtimeConfig.deviceID``)
so a NetworkAttachmentDefinition written for host-device works with only ``type`` changed, and adds:
``mode`` (``netdev``/``dpdk``), ``hugepages``, ``driver``, ``noiommu``, ``mtu``, ``wait`` (seconds to wait for a
NIC still being hot-plugged), static ``addresses``/``gateway``/``routes`` (also without ``ipam``), ``ifname`` (the
NIC's name in the pod instead of ``CNI_IFNAME``: containerd names a pod's networks eth0, eth1, ...).

What host-device gets wrong and this plugin does not: the NIC's host name, MTU and link state come back from the
ledger (not from the link alias, which udev or a netns teardown loses); altnames are dropped before renaming; a
DEL with the netns gone still frees the IPAM address and the ledger entry; the CNI record is written before the
NIC moves, so a crash mid-ADD is undone by the runtime's DEL.
"""
from __future__ import annotations

import json
import logging
import os
import re
import select
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import cnispec as spec
from . import host, models, validate
from .cnispec import CniError, Env, IpConfig, Result
from .errors import Error, GuardError, InputError, NotFoundError
from .request import AttachRequest

log = logging.getLogger("dpdkeni.cni")

DEFAULT_WAIT = 10.0
MAX_WAIT = 3600.0  # a config's wait past an hour is a mistake, not a hot-plug
MODES = models.MODES
_DEVICE_KEYS = ("device", "hwaddr", "kernelpath", "pciBusID")


@dataclass
class NetConf:
    """The plugin's view of the network configuration."""

    name: str
    version: str
    nic_spec: str
    mode: str = "netdev"
    wait: float = DEFAULT_WAIT
    addresses: List[str] = field(default_factory=list)
    gateway: Optional[str] = None
    routes: List[Dict[str, Any]] = field(default_factory=list)
    mtu: Optional[int] = None
    hugepages: Optional[str] = None
    driver: str = "vfio-pci"
    noiommu: bool = False
    ipam: Optional[Dict[str, Any]] = None
    prev_result: Optional[Result] = None
    ifname: Optional[str] = None  # the NIC's name in the pod instead of CNI_IFNAME
    request: AttachRequest = field(default_factory=AttachRequest)  # mode and settings, checked; no NIC yet

    def name_in_pod(self, env: Env) -> str:
        """What the NIC is called inside the pod: ``ifname`` when configured, else ``CNI_IFNAME``."""
        return self.ifname or env.ifname


def _invalid(msg: str, details: str = "") -> CniError:
    return CniError(spec.INVALID_CONFIG, msg, details)


def nic_spec_from(conf: Mapping[str, Any]) -> str:
    """The NIC named by host-device's keys: ``runtimeConfig.deviceID`` (a device plugin's choice) wins, else
    exactly one of ``device``, ``hwaddr``, ``kernelpath``, ``pciBusID``."""
    from .specs import classify

    device_id = (conf.get("runtimeConfig") or {}).get("deviceID")
    given = [k for k in _DEVICE_KEYS if conf.get(k)]
    if not device_id and len(given) != 1:
        raise _invalid("specify exactly one of device, hwaddr, kernelpath or pciBusID (or runtimeConfig.deviceID)",
                       f"got {', '.join(given) or 'none'}")
    key = "deviceID" if device_id else given[0]
    value = str(device_id or conf[key])
    if key == "kernelpath":
        value = _from_kernelpath(value)
    try:
        kind, normal = classify(value)
    except InputError as exc:
        raise _invalid(f"bad {key} {value!r}", exc.message) from exc
    if key in ("pciBusID", "deviceID") and kind != "pci":
        raise _invalid(f"{key} {value!r} is not a PCI address", "like 0000:00:04.0")
    if key == "hwaddr" and kind != "mac":
        raise _invalid(f"hwaddr {value!r} is not a MAC address", "like 52:54:00:12:34:56")
    return normal


def _from_kernelpath(path: str) -> str:
    """``/sys/devices/pci0000:00/0000:00:04.0`` -> the PCI address; ``…/net/<name>`` -> the interface name."""
    parts = [p for p in path.rstrip("/").split("/") if p]
    if len(parts) >= 2 and parts[-2] == "net":
        return parts[-1]
    if not parts:
        raise _invalid(f"bad kernelpath {path!r}", "like /sys/devices/pci0000:00/0000:00:04.0")
    return parts[-1]


def _static_ips(conf: Mapping[str, Any]) -> List[str]:
    """Static ``addresses`` and the ``ips`` capability (``runtimeConfig.ips``, as Multus passes it)."""
    out = _listed(conf, "addresses") + _listed(conf.get("runtimeConfig") or {}, "ips")
    _checked(validate.addresses, out)
    return [str(a) for a in out]


def _listed(conf: Mapping[str, Any], key: str) -> List[Any]:
    value = conf.get(key) or []
    if not isinstance(value, list):
        raise _invalid(f"{key} must be a list of CIDRs", repr(value)[:200])
    return list(value)


def _checked(check: Callable[[Any], Any], value: Any) -> Any:
    """``check(value)`` (a :mod:`dpdkeni.validate` function, whose message names the value); its InputError is
    error 7."""
    try:
        return check(value)
    except InputError as exc:
        raise _invalid(exc.message, exc.hint or "") from None


def parse_netconf(conf: Mapping[str, Any]) -> NetConf:
    """Validate a parsed network configuration (error 7 with the offending key)."""
    mode = conf.get("mode") or "netdev"
    if mode not in MODES:
        raise _invalid(f"bad mode {mode!r}", "netdev or dpdk")
    ipam = conf.get("ipam") or None
    if ipam is not None and (not isinstance(ipam, dict) or not ipam.get("type")):
        raise _invalid("ipam must be an object with a type", repr(ipam)[:200])
    try:
        wait = float(conf.get("wait", DEFAULT_WAIT))
    except (TypeError, ValueError) as exc:
        raise _invalid("wait must be a number of seconds", str(exc)) from exc
    if not 0 <= wait <= MAX_WAIT:
        raise _invalid(f"wait must be from 0 to {MAX_WAIT:g} seconds", repr(conf.get("wait")))
    routes = _checked(validate.routes, conf.get("routes") or [])
    # the attach this configuration asks for, checked as every attach is (its NIC, target, name in the pod and
    # IPAM addresses are known at ADD)
    request = _checked(lambda c: AttachRequest(
        mode=mode, mtu=c.get("mtu"), gateway=c.get("gateway"), hugepages=c.get("hugepages"),
        driver=c.get("driver") or "vfio-pci", noiommu=bool(c.get("noiommu")),
        ifname=c["ifname"] if c.get("ifname") is not None else "eth0"), conf)
    gateway = validate.gateway(request.gateway)
    prev = conf.get("prevResult")
    return NetConf(
        name=str(conf.get("name") or ""), version=conf["cniVersion"], nic_spec=nic_spec_from(conf), mode=mode,
        wait=wait, addresses=_static_ips(conf), gateway=str(gateway) if gateway else None, routes=list(routes),
        mtu=request.mtu, hugepages=request.hugepages, driver=request.driver, noiommu=request.noiommu, ipam=ipam,
        prev_result=Result.from_json(prev) if prev is not None else None,
        ifname=request.ifname if conf.get("ifname") is not None else None, request=request)


# --- waiting for a NIC that is still being hot-plugged ------------------------------------------------------


def find_nic_waiting(nic_spec: str, timeout: float):
    """The NIC, waiting up to ``timeout`` seconds for it to appear (a cloud NIC is still being hot-plugged when
    the pod starts: terway and amazon-vpc-cni retry for the same reason). Error 11 when it never comes."""
    from .inventory import find_nic

    try:
        return find_nic(nic_spec, active=set)  # handoff.attach decides activity on its own snapshot
    except NotFoundError:
        if timeout <= 0:
            raise _not_there(nic_spec, timeout) from None
    log.info("NIC %s is not here yet: waiting up to %g s", nic_spec, timeout)
    nic = _wait_events(nic_spec, timeout)
    if nic is None:
        raise _not_there(nic_spec, timeout)
    return nic


def _not_there(nic_spec: str, timeout: float) -> CniError:
    return CniError(spec.TRY_AGAIN_LATER, f"NIC {nic_spec} not found after waiting {timeout:g} s",
                    "it may still be hot-plugging: the runtime retries ADD; see 'dpdkeni list --all'")


def _wait_events(nic_spec: str, timeout: float):
    """Wait for the NIC: :func:`dpdkeni.events.wait_for_nic` for a MAC or PCI address (uevents; the managed models
    and the models file's stand-in kinds count), netlink link events for an interface name (a netdev appearing
    or being renamed), re-checking after each."""
    from .specs import classify

    kind, value = classify(nic_spec)
    waiter = _events_waiter()
    if waiter is not None and kind in ("mac", "pci"):
        try:
            return waiter(**{kind: value, "timeout": timeout})
        except Error as exc:  # events.WaitTimeout: the caller reports error 11
            log.info("waiting for %s: %s", nic_spec, exc)
            return None
    return _wait_netlink(nic_spec, timeout)


def _events_waiter() -> Optional[Callable[..., Any]]:
    try:
        from .events import wait_for_nic
    except ImportError:
        return None
    return wait_for_nic


def _wait_netlink(nic_spec: str, timeout: float):
    from pyroute2 import IPRoute

    from .inventory import find_nic

    deadline = time.monotonic() + timeout
    with IPRoute() as ipr:
        ipr.bind()  # subscribe first, then look again: nothing that appears in between is missed
        while True:
            try:
                return find_nic(nic_spec, active=set)  # handoff.attach decides activity on its own snapshot
            except NotFoundError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if select.select([ipr.fileno()], [], [], left)[0]:
                ipr.get()


# --- the CNI record: which NIC this (network, container, ifname) holds --------------------------------------


def records_dir() -> str:
    """Where the CNI records (and the netns pins) are: ``<state dir>/cni``."""
    from .statedir import path

    return os.path.join(path(), "cni")


def _record_path(name: str, container_id: str, ifname: str) -> str:
    """The record of (network, container, ifname): a readable prefix, then a hash of all three, so two long
    container ids that share a prefix never share a record (nor a netns pin: :func:`_pin_path`)."""
    import hashlib

    digest = hashlib.sha256("\0".join((name, container_id, ifname)).encode("utf-8", "surrogateescape")).hexdigest()
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{name[:40]}-{ifname[:15]}")
    return os.path.join(records_dir(), f"{readable}-{digest}.json")


def save_record(path: str, record: Dict[str, Any]) -> None:
    """Write the record atomically (before the NIC moves, so a later DEL always knows what to release); no fsync,
    as for the ledger: the attachment it records does not outlive a power loss."""
    from . import statedir

    statedir.subdir(os.path.basename(os.path.dirname(path)))
    statedir.write_atomic(path, json.dumps(record).encode(), fsync=False)


def load_record(path: str) -> Optional[Dict[str, Any]]:
    """The record, or None when there is none (DEL after DEL)."""
    from . import statedir

    try:
        with statedir.opened(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CniError(spec.IO_FAILURE, f"CNI record {path} is unreadable", str(exc)) from exc
    if not isinstance(record, dict):
        raise CniError(spec.IO_FAILURE, f"CNI record {path} is unreadable", "not a JSON object")
    return record


def drop_record(path: str) -> None:
    """Remove the record (gone already is fine; unlink never follows a symlink)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- ADD ----------------------------------------------------------------------------------------------------


def _ipam(conf: NetConf, command: str, raw: bytes, env: Env) -> Optional[Dict[str, Any]]:
    if not conf.ipam:
        return None
    return spec.delegate(conf.ipam["type"], command, raw, env)


def build_result(conf: NetConf, env: Env, nic, ipam_result: Optional[Result]) -> Result:
    """The ADD result: our interface (index 0), IPAM's addresses and routes then the static ones."""
    result = Result(interfaces=[{"name": conf.name_in_pod(env), "mac": nic.mac, "sandbox": env.netns,
                                 "mtu": conf.mtu, "pciID": nic.pci}])
    if conf.mode == "dpdk":
        result.interfaces[0].pop("sandbox")  # a DPDK port is no netdev in the pod's namespace
    if ipam_result is not None:
        result.ips = [IpConfig(ip.address, ip.gateway, 0) for ip in ipam_result.ips]
        result.routes = list(ipam_result.routes)
        result.dns = ipam_result.dns
    result.ips += [IpConfig(a, conf.gateway, 0) for a in conf.addresses]
    result.routes += conf.routes
    if conf.gateway and not any(r.get("dst") in ("0.0.0.0/0", "::/0") for r in result.routes):
        result.routes.append({"dst": "::/0" if ":" in conf.gateway else "0.0.0.0/0", "gw": conf.gateway})
    return result


def cmd_add(conf: NetConf, env: Env, raw: bytes) -> Dict[str, Any]:
    """Hand the NIC to ``CNI_NETNS``; returns the result document."""
    check_add_env(env)
    nic = find_nic_waiting(conf.nic_spec, conf.wait)
    path = _record_path(conf.name, env.container_id, env.ifname)
    pin = _pin_path(path) if conf.mode == "netdev" else None
    ipam = _in_thread(lambda: _ipam(conf, "ADD", raw, env))  # the IPAM plugin runs while the kernel moves the NIC
    got: Dict[str, Result] = {}

    def result() -> Result:
        if "result" not in got:
            doc = ipam()
            got["result"] = build_result(conf, env, nic, Result.from_json(doc) if doc is not None else None)
        return got["result"]

    try:
        save_record(path, {"nic": nic.pci or nic.ifname, "mac": nic.mac, "pci": nic.pci, "ifname": nic.ifname,
                           "netns": env.netns, "mode": conf.mode, "container": env.container_id,
                           "cni_ifname": env.ifname, "network": conf.name, "pin": pin,
                           # what an IPAM DEL needs when the runtime never calls ours (cni_sweep)
                           "conf": raw.decode("utf-8", "replace"), "cni_path": list(env.path), "args": env.args})
        if pin is not None:
            pin_netns(env.netns, pin)
        _attach(conf, env, nic, result, pin or env.netns)
        return result().to_json(conf.version)
    except BaseException:
        try:
            ipam()  # IPAM ADD has finished (its error, if it is what failed, is already on its way up)
        except BaseException:  # noqa: B036
            pass
        _undo_add(conf, env, raw, path, pin)
        raise


def check_add_env(env: Env) -> None:
    """CNI_IFNAME must be an interface name and CNI_NETNS a network namespace that is not the host's own (error 4,
    before anything is done: no IPAM address taken, no record written); a netns that does not exist is left to
    the attach (error 3)."""
    from .netns import resolve_target

    try:
        validate.ifname(env.ifname)
    except InputError as exc:
        raise CniError(spec.INVALID_ENV, f"CNI_IFNAME: {exc.message}") from None
    netns = env.netns
    try:
        resolve_target(netns)
    except NotFoundError:
        return
    except InputError as exc:
        raise CniError(spec.INVALID_ENV, f"CNI_NETNS: {exc.message}", exc.hint or "") from None


def _undo_add(conf: NetConf, env: Env, raw: bytes, path: str, pin: Optional[str]) -> None:
    try:
        _ipam(conf, "DEL", raw, env)
    except CniError as exc:
        log.warning("undoing IPAM after a failed ADD: %s", exc.msg)
    if pin is not None:
        unpin_netns(pin)
    drop_record(path)


MS_BIND = 4096
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8


def _pin_path(record_path: str) -> str:
    return record_path[:-len(".json")] + ".netns"


def pin_netns(netns: str, pin: str) -> None:
    """Bind-mount the pod's netns file at ``pin`` (as ``ip netns add`` does), so the namespace, with the NIC in
    it, outlives the pod's processes and its own netns file until DEL has moved the NIC home and unpinned it.
    Without it a NIC whose netns went first (containerd's StopPodSandbox after the netns file was deleted: the
    sandbox is killed before CNI DEL) dies with it (a veth) or lands in the host as devN (a PCI NIC)."""
    from . import statedir
    from .nsexec import mount

    statedir.ensure(os.path.dirname(pin))
    unpin_netns(pin)  # a pin left by an ADD that crashed under the same record name
    os.close(statedir.open_file(pin, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    try:
        mount(netns, pin, "none", MS_BIND)
    except OSError as exc:
        os.unlink(pin)
        import errno

        if exc.errno == errno.ENOENT:  # the pod's netns is gone: error 3, as the attach would say
            raise CniError(spec.UNKNOWN_CONTAINER, f"target {netns}: no such file") from exc
        raise CniError(spec.HANDOFF_FAILED, f"pinning {netns} at {pin}", exc.strerror or str(exc)) from exc


def unpin_netns(pin: str) -> None:
    """Undo :func:`pin_netns` (nothing pinned is fine): the namespace goes when nothing else holds it."""
    import errno

    from .nsexec import umount

    try:
        umount(pin, MNT_DETACH | UMOUNT_NOFOLLOW)  # a symlink planted at the pin's name is not followed
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):  # not a mount point / no file
            raise
    try:
        os.unlink(pin)
    except FileNotFoundError:
        pass


def _attach(conf: NetConf, env: Env, nic, result: Callable[[], Result], netns: str) -> None:
    """Hand the NIC over; ``result`` waits for IPAM, so the netdev handoff calls it after the move."""
    from . import handoff

    if conf.mode == "dpdk":
        result()  # IPAM first: only the netdev handoff undoes itself when the addresses fail after the move
    addresses: Any = (lambda: [ip.address for ip in result().ips]) if conf.mode == "netdev" else []
    target = dpdk_target(env.netns) if conf.mode == "dpdk" else netns
    req = conf.request.bind(nic=nic, target=target, ifname=conf.name_in_pod(env), addresses=addresses,
                            gateway=None)  # the gateway is a route of the result (below), not the attach's
    handoff.attach(req.nic, req.target, **req.kwargs())
    if conf.mode == "netdev" and result().routes:
        try:
            add_routes(env.netns, conf.name_in_pod(env), result().routes)
        except BaseException:
            handoff.release(nic)
            raise


def dpdk_target(netns: str):
    """The target for DPDK mode: the pod's netns with a process in it (``/proc/N/ns/net`` names it; else the
    lowest pid whose netns is this one, the pod's sandbox). DPDK mode makes the vfio nodes and the hugetlbfs mount
    in that process's namespaces; the application containers a pod starts after ADD get the nodes through the CDI
    spec ('dpdkeni cdi generate') or a device plugin, since no CNI call sees them."""
    import psutil

    from .netns import Target, resolve_target

    tgt = resolve_target(netns)
    parts = netns.split("/")
    if len(parts) == 5 and parts[1] == "proc" and parts[2].isdigit() and parts[3:] == ["ns", "net"]:
        return Target(tgt.spec, tgt.path, tgt.ns_id, int(parts[2]))
    for pid in psutil.pids():
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == tgt.ns_id:
                return Target(tgt.spec, tgt.path, tgt.ns_id, pid)
        except OSError:
            continue
    raise _invalid(f"dpdk mode: no process runs in {netns} yet, so there is nowhere to put the vfio nodes",
                   "start the pod sandbox first, or give the container the NIC with the CDI spec "
                   "('dpdkeni cdi generate') and a device plugin")


def add_routes(netns: str, ifname: str, routes: List[Dict[str, Any]]) -> None:
    """Add the result's routes through ``ifname`` inside the namespace (what the Go ``ipam.ConfigureIface``
    does for host-device)."""
    from pyroute2.netlink.exceptions import NetlinkError

    with _iproute_in(netns) as ipr:
        index = _link_index(ipr, ifname)
        for route in routes:
            kw: Dict[str, Any] = {"dst": route["dst"], "oif": index}
            if route.get("gw"):
                kw["gateway"] = route["gw"]
            if route.get("priority") is not None:
                kw["priority"] = int(route["priority"])
            try:
                ipr.route("add", **kw)
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST: the kernel already has it (a prefix route for the subnet)
                    raise CniError(spec.HANDOFF_FAILED, f"adding route {route} in {netns}", str(exc)) from exc


def _iproute_in(netns: str):
    """An IPRoute whose socket lives in the namespace file ``netns`` (opened by path: never created)."""
    from .netns import iproute_in

    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return iproute_in(fd)
    finally:
        os.close(fd)


def _link_index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise CniError(spec.CHECK_FAILED, f"interface {ifname} is not in the namespace")
    return found[0]


# --- DEL ----------------------------------------------------------------------------------------------------


def cmd_del(conf: NetConf, env: Env, raw: bytes) -> None:
    """Give the NIC back and free its address; succeeds when there is nothing left to do (DEL after DEL, the
    netns already gone), as the spec asks."""
    path = _record_path(conf.name, env.container_id, env.ifname)
    record = load_record(path)
    ipam = _in_thread(lambda: _ipam(conf, "DEL", raw, env))  # the IPAM plugin runs while the NIC moves home
    try:
        if record is not None:
            release_nic(record)
    finally:
        ipam()
    drop_record(path)


def _in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Start ``fn`` in a thread; the returned function waits for it and returns its result or raises its error
    (a delegated plugin is a process of its own: its start-up overlaps the kernel's wait in a move)."""
    import threading

    out: Dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # handed to the waiter
            out["error"] = exc

    thread = threading.Thread(target=host.carried(run), daemon=True)
    thread.start()

    def wait() -> Any:
        thread.join()
        if "error" in out:
            raise out["error"]
        return out.get("result")

    return wait


def release_nic(record: Mapping[str, Any]) -> None:
    """Release what the ledger holds for the recorded NIC (out of the pinned netns, when the pod's is gone), then
    unpin the netns; a NIC that vanished anyway only frees its lease."""
    from . import handoff
    from .ledger import Ledger

    nic = record.get("nic")
    try:
        handoff.release(nic)
    except NotFoundError as exc:
        log.info("NIC %s is gone (%s): freeing its lease", nic, exc.message)
    ledger = Ledger()
    for key in _lease_keys(record):
        if ledger.get(key) is not None:
            ledger.remove(key)
    pin = recorded_pin(record)
    if pin is not None:
        unpin_netns(pin)


def recorded_pin(record: Mapping[str, Any]) -> Optional[str]:
    """The netns pin of a record that has one: always the pin its own (network, container, ifname) name in the
    records dir, whatever path the record holds (a path elsewhere is never unmounted or removed)."""
    if not record.get("pin"):
        return None
    own = _pin_path(_record_path(str(record.get("network") or ""), str(record.get("container") or ""),
                                 str(record.get("cni_ifname") or "")))
    if record["pin"] != own:
        log.warning("CNI record names the pin %r, not its own %s: using its own", record["pin"], own)
    return own


def _lease_keys(record: Mapping[str, Any]) -> Tuple[str, ...]:
    if record.get("pci"):
        return (record["pci"],)
    return (f"if:{record.get('ifname')}",)


# --- CHECK --------------------------------------------------------------------------------------------------


def cmd_check(conf: NetConf, env: Env, raw: bytes) -> None:
    """Verify what ADD set up against ``prevResult``: the interface, its addresses, its routes."""
    if conf.prev_result is None:
        raise _invalid("CHECK needs prevResult in the configuration")
    _ipam(conf, "CHECK", raw, env)
    record = load_record(_record_path(conf.name, env.container_id, env.ifname))
    if record is None:
        raise CniError(spec.CHECK_FAILED, f"no attachment of {env.ifname} for container {env.container_id}")
    if record.get("mode") == "dpdk":
        return _check_dpdk(record)
    from .netns import is_netns_file

    if not is_netns_file(env.netns):
        raise CniError(spec.CHECK_FAILED, f"CNI_NETNS {env.netns} is not a network namespace")
    problems = check_netns(env.netns, conf.name_in_pod(env), conf.prev_result)
    if problems:
        raise CniError(spec.CHECK_FAILED, f"{conf.name_in_pod(env)} in {env.netns} differs from prevResult",
                       "; ".join(problems))


def _check_dpdk(record: Mapping[str, Any]) -> None:
    from .ledger import Ledger

    if Ledger().get(record["nic"]) is None:
        raise CniError(spec.CHECK_FAILED, f"{record['nic']} has no lease any more")


def check_netns(netns: str, ifname: str, prev: Result) -> List[str]:
    """What in the namespace differs from ``prev`` (empty when all is as ADD left it)."""
    problems: List[str] = []
    mine = [i for i, iface in enumerate(prev.interfaces) if iface.get("name") == ifname]
    with _iproute_in(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return [f"no interface {ifname}"]
        link = ipr.get_links(found[0])[0]
        mac = (link.get_attr("IFLA_ADDRESS") or "").lower()
        for i in mine:
            want = (prev.interfaces[i].get("mac") or "").lower()
            if want and want != mac:
                problems.append(f"mac is {mac}, prevResult says {want}")
        have = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=found[0])}
        for ip in prev.ips:
            if (ip.interface is None or ip.interface in mine) and _norm_cidr(ip.address) not in have:
                problems.append(f"address {ip.address} missing")
        problems += _missing_routes(ipr, found[0], prev.routes)
    return problems


def _norm_cidr(text: str) -> str:
    import ipaddress

    iface = ipaddress.ip_interface(text)
    return f"{iface.ip}/{iface.network.prefixlen}"


def _missing_routes(ipr, index: int, routes: List[Dict[str, Any]]) -> List[str]:
    import ipaddress
    import socket

    have = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family, table=254):
            dst = r.get_attr("RTA_DST")
            prefix = f"{dst}/{r['dst_len']}" if dst else ("::/0" if family == socket.AF_INET6 else "0.0.0.0/0")
            have.add((str(ipaddress.ip_network(prefix, strict=False)), r.get_attr("RTA_GATEWAY")))
    out = []
    for route in routes:
        dst, gw = str(ipaddress.ip_network(route["dst"], strict=False)), route.get("gw")
        present = (dst, gw) in have if gw else any(d == dst for d, _ in have)
        if not present:
            out.append(f"route {route['dst']}" + (f" via {gw}" if gw else "") + " missing")
    return out


# --- STATUS, GC, VERSION, the entry point -------------------------------------------------------------------


def cmd_status(conf: Mapping[str, Any], env: Env) -> None:
    """Ready when the state dir is writable and the delegated IPAM plugin (if any) is in ``CNI_PATH``."""
    from .ledger import Ledger

    try:
        Ledger().leases()
    except Error as exc:
        raise CniError(spec.PLUGIN_NOT_AVAILABLE, "the dpdkeni ledger is not usable", str(exc)) from exc
    ipam = conf.get("ipam") or {}
    if ipam.get("type"):
        try:
            spec.find_plugin(ipam["type"], env.path)
        except CniError as exc:
            raise CniError(spec.PLUGIN_NOT_AVAILABLE, exc.msg, exc.details) from exc


def cmd_gc(conf: Mapping[str, Any], env: Env, raw: bytes) -> None:
    """Release the attachments of this network that the runtime no longer lists in
    ``cni.dev/valid-attachments`` (spec 1.1) and free their addresses with an IPAM DEL each (IPAM plugins before
    1.1 know no GC), then pass GC on to IPAM where it knows it."""
    valid = {(a.get("containerID"), a.get("ifname")) for a in conf.get("cni.dev/valid-attachments") or []}
    ipam = (conf.get("ipam") or {}).get("type")
    directory = records_dir()
    for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        path = os.path.join(directory, entry)
        record = load_record(path) if entry.endswith(".json") else None
        if not record or record.get("network") != conf.get("name") or \
                (record.get("container"), record.get("cni_ifname")) in valid:
            continue
        log.info("GC: releasing %s of container %s", record.get("nic"), record.get("container"))
        release_nic(record)
        if ipam:
            stale = Env("DEL", record.get("container", ""), "", record.get("cni_ifname", ""), env.args, env.path)
            spec.delegate(ipam, "DEL", raw, stale)
        drop_record(path)
    if ipam:
        try:
            spec.delegate(ipam, "GC", raw, env)
        except CniError as exc:
            if exc.code not in (spec.INVALID_ENV, spec.INCOMPATIBLE_VERSION):
                raise
            log.info("%s knows no GC (%s): stale addresses were freed by DEL", ipam, exc.msg)


def _error_code(exc: Error) -> int:
    if isinstance(exc, GuardError):
        return spec.GUARD_REFUSED
    if isinstance(exc, NotFoundError):
        return spec.UNKNOWN_CONTAINER if "target" in exc.message else spec.INVALID_CONFIG
    if isinstance(exc, InputError):
        return spec.INVALID_CONFIG
    return spec.HANDOFF_FAILED


def dispatch(environ: Mapping[str, str], raw: bytes) -> Optional[Dict[str, Any]]:
    """Run one invocation; returns the document to print (None for nothing) or raises CniError."""
    env = spec.parse_env(environ)
    if env.command == "VERSION":
        return spec.version_info(_version_of(raw))
    conf = spec.parse_config(raw)
    if env.command == "STATUS":
        if not spec.version_at_least(conf["cniVersion"], "1.1.0"):
            raise CniError(spec.INCOMPATIBLE_VERSION, "STATUS needs cniVersion 1.1.0 or later")
        cmd_status(conf, env)
        return None
    if env.command == "GC":
        cmd_gc(conf, env, raw)
        return None
    netconf = parse_netconf(conf)
    if env.command == "CHECK" and not spec.version_at_least(netconf.version, "0.4.0"):
        raise CniError(spec.INCOMPATIBLE_VERSION, "CHECK needs cniVersion 0.4.0 or later")
    handler = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}[env.command]
    try:
        return handler(netconf, env, raw)
    except CniError:  # an IPAM plugin's own error: relayed with its code (a CniError is an Error too)
        raise
    except Error as exc:
        raise CniError(_error_code(exc), exc.message, exc.hint or "") from exc


def _version_of(raw: bytes) -> str:
    try:
        return str(json.loads(raw).get("cniVersion") or spec.LATEST)
    except (ValueError, AttributeError):
        return spec.LATEST


def main(environ: Optional[Mapping[str, str]] = None, stdin: Any = None, stdout: Any = None) -> int:
    """Run as a CNI plugin: configuration on stdin, ``CNI_*`` in the environment, the result or the error JSON
    on stdout; exit 0 on success, 1 on error. Log lines go to stderr."""
    environ = os.environ if environ is None else environ
    out = stdout or sys.stdout
    logging.basicConfig(level=logging.DEBUG if environ.get("DPDKENI_CNI_DEBUG") else logging.WARNING,
                        format="dpdkeni-cni: %(message)s", stream=sys.stderr)
    raw = b""
    try:
        raw = (stdin or sys.stdin.buffer).read()
        doc = dispatch(environ, raw)
        status = 0
    except CniError as exc:
        doc, status = exc.to_json(_version_of(raw)), 1
    except OSError as exc:
        doc, status = CniError(spec.IO_FAILURE, str(exc)).to_json(_version_of(raw)), 1
    except Exception as exc:  # the runtime must get the spec's JSON whatever broke; the trace goes to stderr
        log.debug("unexpected failure", exc_info=True)
        doc, status = CniError(spec.HANDOFF_FAILED, f"{type(exc).__name__}: {exc}").to_json(_version_of(raw)), 1
    if doc is not None:
        json.dump(doc, out, indent=1)
        out.write("\n")
        out.flush()
    return status


def warm_up() -> None:
    """Import and open once what ADD and DEL use, so that the resident server's first call does not pay for it
    (about 100 ms here: the pod that happens to come first should start as fast as the others)."""
    import ipaddress  # noqa: F401
    import subprocess  # noqa: F401

    import psutil  # noqa: F401
    from pyroute2 import IPRoute

    from . import events, handoff, inventory, netdev  # noqa: F401

    with IPRoute() as ipr:
        ipr.link_lookup(ifname="lo")


def _light_pyroute2() -> None:
    """Make ``import pyroute2`` load only what is used. Its package ``__init__`` imports every netlink family
    (NDB, IPDB, conntrack, nftables, wireguard, ...): about a fifth of a plugin call's CPU, paid on every pod
    start. The package module is created without running ``__init__``; ``IPRoute``/``NetNS`` come from
    ``pyroute2.iproute``, submodules import as usual, and any other name runs the real ``__init__`` once."""
    import importlib
    import importlib.util

    if "pyroute2" in sys.modules:
        return
    found = importlib.util.find_spec("pyroute2")
    if found is None or found.loader is None:
        return
    module = importlib.util.module_from_spec(found)
    direct = {"IPRoute": "pyroute2.iproute", "NetNS": "pyroute2.iproute", "AsyncIPRoute": "pyroute2.iproute"}

    def __getattr__(name: str) -> Any:
        try:
            if name in direct:
                return getattr(importlib.import_module(direct[name]), name)
            return importlib.import_module(f"pyroute2.{name}")
        except (ImportError, AttributeError):  # another name, or a pyroute2 laid out otherwise (0.7)
            del module.__getattr__
            found.loader.exec_module(module)
            return getattr(module, name)

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["pyroute2"] = module


def run() -> None:
    """Console-script entry point (``dpdkeni-cni``)."""
    _light_pyroute2()
    sys.exit(main())
