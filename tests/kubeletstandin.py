"""A kubelet stand-in for device plugins, written from the official deviceplugin/v1beta1 API (the messages are the
package's dpdkeni/k8s/protos, checked against the official field table in tests/test_device_plugin.py).

It does what the kubelet's device manager does with a plugin: serves ``Registration`` on ``<dir>/kubelet.sock``;
on ``Register`` dials ``<dir>/<endpoint>``, asks ``GetDevicePluginOptions`` and keeps a ``ListAndWatch`` stream
open, recording each list with the time it came; calls ``GetPreferredAllocation`` and ``Allocate`` for a test.
``restart()`` is a kubelet restart: its socket and every plugin socket in the dir are deleted (the kubelet's
device manager empties the dir at start), then kubelet.sock is made anew.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent import futures
from typing import Any, Callable, Dict, List, Optional, Tuple

import grpc

from dpdkeni.k8s import api

# one list as the stand-in saw it: (monotonic time, [(ID, health, [NUMA ids])])
Seen = Tuple[float, List[Tuple[str, str, List[int]]]]


class _Plugin:
    """The kubelet's end of one registered plugin."""

    def __init__(self, kubelet: "Kubelet", request: Any) -> None:
        self.request = request
        self.resource = request.resource_name
        self.channel = grpc.insecure_channel(f"unix://{os.path.join(kubelet.dir, request.endpoint)}")
        self.stub = kubelet.grpc_mod.DevicePluginStub(self.channel)
        self.pb = kubelet.pb
        self.options = self.stub.GetDevicePluginOptions(self.pb.Empty(), timeout=10)
        self.lists: List[Seen] = []
        self.cond = threading.Condition()
        self.stream = self.stub.ListAndWatch(self.pb.Empty())
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for resp in self.stream:
                devices = [(d.ID, d.health, [n.ID for n in d.topology.nodes]) for d in resp.devices]
                with self.cond:
                    self.lists.append((time.monotonic(), devices))
                    self.cond.notify_all()
        except grpc.RpcError:
            pass  # the plugin or the stand-in stopped

    def wait_list(self, pred: Callable[[List], bool], timeout: float = 10.0) -> Seen:
        """The first list received (already or within ``timeout``) for which ``pred`` holds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for seen in self.lists:
                    if pred(seen[1]):
                        return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such list within {timeout} s; lists seen: {self.lists}")
                self.cond.wait(left)

    def last(self) -> Optional[Seen]:
        with self.cond:
            return self.lists[-1] if self.lists else None

    def allocate(self, *ids: str) -> Any:
        req = self.pb.AllocateRequest(container_requests=[self.pb.ContainerAllocateRequest(devices_ids=list(ids))])
        return self.stub.Allocate(req, timeout=30)

    def preferred(self, available: List[str], must: List[str], size: int) -> List[str]:
        req = self.pb.PreferredAllocationRequest(container_requests=[self.pb.ContainerPreferredAllocationRequest(
            available_deviceIDs=available, must_include_deviceIDs=must, allocation_size=size)])
        return list(self.stub.GetPreferredAllocation(req, timeout=10).container_responses[0].deviceIDs)

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


class Kubelet:
    """The stand-in: ``plugins`` by resource name (the latest registration of each), ``registrations`` all."""

    def __init__(self, directory: str, refuse: int = 0) -> None:
        self.dir = directory
        self.refuse = refuse  # the first this many Register calls fail (UNAVAILABLE), as a kubelet starting up
        self.pb, self.grpc_mod = api.stubs()
        self.registrations: List[Tuple[float, Any]] = []
        self.plugins: Dict[str, _Plugin] = {}
        self.cond = threading.Condition()
        self.server: Any = None
        self.refused = 0

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, api.KUBELET_SOCKET)

    def start(self) -> "Kubelet":
        kubelet = self

        class Registration(self.grpc_mod.RegistrationServicer):
            def Register(self, request: Any, context: Any) -> Any:
                with kubelet.cond:
                    refuse = kubelet.refused < kubelet.refuse
                    kubelet.refused += refuse
                if refuse:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "device manager not ready")
                plugin = _Plugin(kubelet, request)  # the kubelet dials back before it answers
                with kubelet.cond:
                    old = kubelet.plugins.get(request.resource_name)
                    kubelet.plugins[request.resource_name] = plugin
                    kubelet.registrations.append((time.monotonic(), request))
                    kubelet.cond.notify_all()
                if old is not None:
                    old.close()
                return kubelet.pb.Empty()

        os.makedirs(self.dir, exist_ok=True)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.grpc_mod.add_RegistrationServicer_to_server(Registration(), self.server)
        self.server.add_insecure_port(f"unix://{self.socket}")
        self.server.start()
        return self

    def wait_registered(self, count: int, timeout: float = 10.0) -> List[Tuple[float, Any]]:
        """All registrations once there are at least ``count``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.registrations) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.registrations)} registrations within {timeout} s, not {count}")
                self.cond.wait(left)
            return list(self.registrations)

    def plugin(self, resource: str) -> _Plugin:
        with self.cond:
            return self.plugins[resource]

    def stop(self) -> None:
        for plugin in self.plugins.values():
            plugin.close()
        if self.server is not None:
            self.server.stop(grace=0).wait(5)
            self.server = None

    def restart(self) -> None:
        """A kubelet restart: its socket and the plugins' sockets are deleted, then it serves anew."""
        self.stop()
        for name in os.listdir(self.dir):
            if name.endswith(".sock"):
                os.unlink(os.path.join(self.dir, name))
        self.start()
