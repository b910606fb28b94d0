"""``dpdkeni k8s device-plugin``: one kubelet device plugin (v1beta1) per pool, each on its own unix socket in the
kubelet's device-plugins dir, registered with the kubelet and registered again when the kubelet comes back.

One loop (:meth:`DevicePlugin.serve`) does everything that is not a gRPC call, each pass bounded to 0.25 s:
- **hot-plug**: the :class:`dpdkeni.events.Watcher`'s socket; any uevent of a NIC re-reads the pools
  (:class:`~dpdkeni.k8s.table.Table`), and a changed list goes to every ListAndWatch stream at once;
- **the kubelet**: ``kubelet.sock`` is stat'ed each pass; when it appears or is another file than the one we
  registered with (a kubelet restart, which also deletes the plugins' sockets), each pool's server is started
  anew on its socket and registered again; a pool whose socket was deleted is restarted too;
- **pods' ends**: once a second :meth:`~dpdkeni.k8s.claims.Claims.check` looks at the claimed NICs' holders.
"""
from __future__ import annotations

import collections
import logging
import os
import stat
import threading
import time
from concurrent import futures
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from ..errors import Error, GuardError, InputError, NotFoundError, as_error
from ..events import Watcher
from ..sysfs import Sysfs
from . import api
from .claims import Answer, Claims
from .pools import Config, Pool
from .table import Table

log = logging.getLogger(__name__)

LOOP_S = 0.25          # the longest the loop waits for uevents between its other checks
CHECK_S = 1.0          # how often the holders of claimed NICs are looked at
REGISTER_TIMEOUT_S = 5.0
REGISTER_RETRY_S = 1.0   # a kubelet that refused or did not answer is asked again this much later


def preferred(available: List[str], must: List[str], size: int, numa_of: Callable[[str], Optional[int]]) -> List[str]:
    """GetPreferredAllocation for one container: ``must`` first, then the available NICs on the NUMA node asked,
    by PCI address. The node asked is the one the ``must`` NICs are on (most of them); with none, the node that
    has the most available NICs, so the allocation stays on one node when it can."""
    chosen = list(dict.fromkeys(must))
    nodes = [n for n in (numa_of(p) for p in chosen) if n is not None]
    if not nodes:
        nodes = [n for n in (numa_of(p) for p in available if p not in chosen) if n is not None]
    counts = collections.Counter(nodes)
    want = min(counts, key=lambda n: (-counts[n], n)) if counts else None
    rest = sorted((p for p in dict.fromkeys(available) if p not in chosen), key=lambda p: (numa_of(p) != want, p))
    return chosen + rest[:max(0, size - len(chosen))]


def _status(exc: Error) -> Any:
    import grpc
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, GuardError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


class PoolService:
    """The DevicePlugin service of one pool (the generated servicer's methods, by name)."""

    def __init__(self, plugin: "DevicePlugin", pool: Pool) -> None:
        self.plugin, self.pool = plugin, pool
        self.pb = plugin.pb

    def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return self.pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    def ListAndWatch(self, request: Any, context: Any) -> Iterator[Any]:
        table, seen, sent = self.plugin.table, -1, None
        while not self.plugin.stopping.is_set() and context.is_active():
            seen, rows = table.rows(self.pool.name)
            if rows != sent:  # another pool's change bumps the version too: send only this pool's changes
                sent = rows
                log.debug("ListAndWatch %s: %s", self.pool.resource, rows)
                yield self.pb.ListAndWatchResponse(devices=[self._device(*row) for row in rows])
            table.wait(seen, LOOP_S)

    def _device(self, pci: str, health: str, numa: Optional[int]) -> Any:
        dev = self.pb.Device(ID=pci, health=health)
        if numa is not None:
            dev.topology.nodes.append(self.pb.NUMANode(ID=numa))
        return dev

    def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        def numa_of(pci: str) -> Optional[int]:
            member = self.plugin.table.member(pci)
            return member.nic.numa_node if member else None

        out = self.pb.PreferredAllocationResponse()
        for req in request.container_requests:
            ids = preferred(list(req.available_deviceIDs), list(req.must_include_deviceIDs), req.allocation_size,
                            numa_of)
            out.container_responses.append(self.pb.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return out

    def Allocate(self, request: Any, context: Any) -> Any:
        out = self.pb.AllocateResponse()
        for req in request.container_requests:
            try:
                answer = self.plugin.claims.allocate(self.pool, list(req.devices_ids))
            except Exception as exc:  # a system error (OSError, netlink) is one line too, never a traceback
                err = as_error(exc, "allocate")
                if err is None:
                    raise
                log.error("Allocate %s %s: %s", self.pool.resource, list(req.devices_ids), err)
                context.abort(_status(err), str(err))
            out.container_responses.append(self._response(answer))
        return out

    def _response(self, answer: Answer) -> Any:
        pb = self.pb
        resp = pb.ContainerAllocateResponse(
            devices=[pb.DeviceSpec(container_path=c, host_path=h, permissions=p) for c, h, p in answer.devices],
            mounts=[pb.Mount(container_path=c, host_path=h, read_only=r) for c, h, r in answer.mounts],
            cdi_devices=[pb.CDIDevice(name=n) for n in answer.cdi_devices])
        resp.envs.update(answer.envs)
        return resp

    def PreStartContainer(self, request: Any, context: Any) -> Any:
        return self.pb.PreStartContainerResponse()


class DevicePlugin:
    """The plugins of every pool of ``config``, serving in ``plugin_dir`` and registering at its ``kubelet.sock``.

    ``sysfs``, ``active`` and ``watcher`` are for tests (a simulated PCI tree, which interfaces count as active,
    a watcher fed simulated uevents); by default the host's.
    """

    def __init__(self, config: Config, plugin_dir: str = api.DEVICE_PLUGIN_PATH, *, sysfs: Optional[Sysfs] = None,
                 active: Optional[Callable[[], Set[str]]] = None, watcher: Optional[Watcher] = None,
                 source: str = "auto") -> None:
        self.pb, self.grpc_mod = api.stubs()  # the k8s extra: fails here, one line, before anything starts
        self.config = config
        self.dir = plugin_dir
        self.fs = sysfs or Sysfs()
        self.claims: Claims
        self.table = Table(config, self.fs, active, claimed=lambda: self.claims.pcis())
        self.claims = Claims(config, self.table, self.fs)
        self.watcher = watcher or Watcher(source=source, sysfs=self.fs)
        self.stopping = threading.Event()
        self.servers: Dict[str, Any] = {}
        self._sockets: Dict[str, Tuple[int, int]] = {}
        self._kubelet: Optional[Tuple[int, int]] = None
        self._registered: Dict[str, bool] = {}
        self._retry_at = 0.0
        self.registrations = 0

    @property
    def kubelet_socket(self) -> str:
        """The kubelet's registration socket."""
        return os.path.join(self.dir, api.KUBELET_SOCKET)

    def socket_path(self, pool: Pool) -> str:
        """Where ``pool``'s plugin listens."""
        return os.path.join(self.dir, pool.socket_name)

    # ----- servers
    def _start_server(self, pool: Pool) -> None:
        import grpc
        self._stop_server(pool)
        path = self.socket_path(pool)
        self._check_socket_path(path)
        try:
            os.unlink(path)  # a socket left by an earlier run
        except FileNotFoundError:
            pass
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"dp-{pool.name}"))
        self.grpc_mod.add_DevicePluginServicer_to_server(PoolService(self, pool), server)
        server.add_insecure_port(f"unix://{path}")
        server.start()
        st = os.lstat(path)
        self.servers[pool.name] = server
        self._sockets[pool.name] = (st.st_ino, st.st_ctime_ns)
        log.info("%s: serving on %s", pool.resource, path)

    @staticmethod
    def _check_socket_path(path: str) -> None:
        """Refuse (InputError) to replace anything at ``path`` but a socket."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise InputError(f"{path} exists and is not a socket: not replacing it")

    def _stop_server(self, pool: Pool) -> None:
        server = self.servers.pop(pool.name, None)
        if server is not None:
            server.stop(grace=0).wait(5)

    def _socket_lost(self, pool: Pool) -> bool:
        try:
            st = os.lstat(self.socket_path(pool))
        except FileNotFoundError:
            return True
        return (st.st_ino, st.st_ctime_ns) != self._sockets.get(pool.name)

    # ----- the kubelet
    def _kubelet_id(self) -> Optional[Tuple[int, int]]:
        try:
            st = os.stat(self.kubelet_socket)
        except OSError:
            return None
        return (st.st_ino, st.st_ctime_ns) if stat.S_ISSOCK(st.st_mode) else None

    def register(self, pool: Pool) -> None:
        """Register ``pool``'s plugin with the kubelet (raises grpc.RpcError when it does not answer)."""
        import grpc
        with grpc.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
            self.grpc_mod.RegistrationStub(channel).Register(self.pb.RegisterRequest(
                version=api.VERSION, endpoint=pool.socket_name, resource_name=pool.resource,
                options=self.pb.DevicePluginOptions(get_preferred_allocation_available=True)),
                timeout=REGISTER_TIMEOUT_S)
        self.registrations += 1
        log.info("%s: registered with the kubelet (%s)", pool.resource, self.kubelet_socket)

    def _watch_kubelet(self) -> None:
        import grpc
        lost = [p for p in self.config.pools if self._socket_lost(p)]
        for pool in lost:
            log.info("%s: socket gone (kubelet restart?): serving anew", pool.resource)
            self._start_server(pool)
        kubelet = self._kubelet_id()
        if kubelet is None:
            if self._kubelet is not None:
                log.info("kubelet.sock is gone: registering again when it is back")
            self._kubelet = None
            return
        if (kubelet == self._kubelet and not lost) or time.monotonic() < self._retry_at:
            return
        for pool in self.config.pools:
            try:
                self.register(pool)
            except grpc.RpcError as exc:
                if self._registered.get(pool.name, True):
                    log.warning("%s: the kubelet did not take the registration (%s); retrying", pool.resource,
                                exc.details() if hasattr(exc, "details") else exc)
                self._registered[pool.name] = False
                self._retry_at = time.monotonic() + REGISTER_RETRY_S
                return
            self._registered[pool.name] = True
        self._kubelet = kubelet

    # ----- lifecycle
    def start(self) -> None:
        """Adopt an earlier run's allocations, read the pools, start the watcher and the servers."""
        if not os.path.isabs(self.dir) or (os.path.lexists(self.dir) and not os.path.isdir(self.dir)):
            raise InputError(f"the device-plugins dir {self.dir!r} must be an absolute path to a directory")
        for pool in self.config.pools:  # bad input is refused before anything starts
            self._check_socket_path(self.socket_path(pool))
        os.makedirs(self.dir, exist_ok=True)
        adopted = self.claims.adopt()
        if adopted:
            log.info("adopted the allocations of an earlier run: %s", ", ".join(adopted))
        self.watcher.start()
        self.table.rescan()
        for pool in self.config.pools:
            self._start_server(pool)

    def serve(self, until: Optional[threading.Event] = None) -> None:
        """Run the loop until ``until`` (or :attr:`stopping`) is set; then stop the servers."""
        until = until or self.stopping
        next_check = 0.0
        uevents = -1
        try:
            while not until.is_set() and not self.stopping.is_set():
                self.watcher.poll(timeout=LOOP_S)
                if self.watcher.stats["uevents"] != uevents:  # any NIC uevent, settled or not
                    uevents = self.watcher.stats["uevents"]
                    self._guarded("re-reading the pools", self.table.rescan)
                self._guarded("watching the kubelet", self._watch_kubelet)
                if time.monotonic() >= next_check:
                    self._guarded("checking the claimed NICs' holders", self.claims.check)
                    next_check = time.monotonic() + CHECK_S
        finally:
            self.close()

    @staticmethod
    def _guarded(what: str, step: Callable[[], Any]) -> None:
        """One step of the loop: a failure (a ledger that cannot be read now, sysfs changing under a read) is
        logged with its traceback and the loop goes on; the next pass tries again."""
        try:
            step()
        except Exception:  # the plugin keeps serving the kubelet whatever one pass met
            log.exception("%s failed", what)

    def close(self) -> None:
        """Stop the servers (their sockets are removed) and the watcher; NICs pods hold stay bound."""
        self.stopping.set()
        self.table.wake()
        for pool in self.config.pools:
            self._stop_server(pool)
            try:
                os.unlink(self.socket_path(pool))
            except OSError:
                pass
        self.watcher.close()
