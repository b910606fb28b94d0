"""The kubelet's device plugin API (v1beta1), as Python modules generated from ``protos/`` at first use.

The ``.proto`` is the package's one copy of the API; grpcio-tools (the ``k8s`` extra) compiles it into a temporary
directory when a process first needs it (~0.2 s), and the modules stay loaded. Generated modules are not shipped:
protobuf's generated code checks the runtime it runs on and refuses one older than the protoc that made it, so a
module generated here would tie the package to this machine's protobuf.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import threading
from typing import Any, Tuple

from ..errors import Error

VERSION = "v1beta1"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins/"
KUBELET_SOCKET = "kubelet.sock"
PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protos")
PROTO = "deviceplugin_v1beta1.proto"
_lock = threading.Lock()


def compile_proto(proto_dir: str, proto: str) -> Tuple[Any, Any]:
    """Compile ``proto_dir/proto`` with grpcio-tools into a temporary directory and import its two modules
    (``<name>_pb2``, ``<name>_pb2_grpc``); cached for the process. Tests build their CRI client with it too."""
    name = proto[:-len(".proto")]
    with _lock:
        if f"{name}_pb2_grpc" in sys.modules:
            return sys.modules[f"{name}_pb2"], sys.modules[f"{name}_pb2_grpc"]
        try:
            import grpc  # noqa: F401  (the generated services import it)
            from grpc_tools import protoc
        except ImportError as exc:
            raise Error(f"this needs grpcio and grpcio-tools, which cannot be imported: {exc}",
                        "pip install 'dpdkeni[k8s]'") from None
        out = tempfile.mkdtemp(prefix="dpdkeni-proto-")
        try:
            rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                              os.path.join(proto_dir, proto)])
            if rc != 0:
                raise Error(f"protoc could not compile {proto} (status {rc})")
            sys.path.insert(0, out)
            try:
                return importlib.import_module(f"{name}_pb2"), importlib.import_module(f"{name}_pb2_grpc")
            finally:
                sys.path.remove(out)
        finally:
            shutil.rmtree(out, ignore_errors=True)  # the modules are loaded


def stubs() -> Tuple[Any, Any]:
    """(messages module, services module) of the device plugin API, generated on first use."""
    return compile_proto(PROTO_DIR, PROTO)
