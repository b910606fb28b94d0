"""A CRI client as the kubelet is one: gRPC over a unix socket, the official runtime.v1 messages (the subset in
tests/cri/runtime_v1_subset.proto, compiled here with grpcio-tools on first use)."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

PROTO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cri")
PROTO = "runtime_v1_subset.proto"


def stubs() -> tuple:
    """(messages module, grpc module) generated from the proto on first use (cached for this process)."""
    from dpdkeni.k8s.api import compile_proto
    return compile_proto(PROTO_DIR, PROTO)


class Cri:
    """RuntimeService calls on ``socket_path``, each with a deadline."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        import grpc

        self.pb, grpc_mod = stubs()
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.rt = grpc_mod.RuntimeServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def version(self) -> Any:
        return self.rt.Version(self.pb.VersionRequest(version="v1"), timeout=self.timeout)

    def sandbox_config(self, name: str, uid: str, namespace: str = "dpdkeni-test",
                       log_dir: str = "") -> Any:
        pb = self.pb
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            hostname=name, log_directory=log_dir, labels={"app": "dpdkeni-test"},
            linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.POD, ipc=pb.POD))))

    def run_pod_sandbox(self, config: Any) -> str:
        return self.rt.RunPodSandbox(self.pb.RunPodSandboxRequest(config=config), timeout=self.timeout).pod_sandbox_id

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout)

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.rt.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=self.timeout)

    def pod_sandbox_status(self, sandbox_id: str) -> tuple:
        """(status, info) with ``verbose``: containerd's info["info"] is JSON holding the runtime spec."""
        reply = self.rt.PodSandboxStatus(self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True),
                                         timeout=self.timeout)
        return reply.status, dict(reply.info)

    def netns_path(self, sandbox_id: str) -> Optional[str]:
        """The pod's network namespace file, from the sandbox's runtime spec."""
        import json

        info = json.loads(self.pod_sandbox_status(sandbox_id)[1].get("info", "{}"))
        for ns in (info.get("runtimeSpec") or {}).get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                return ns.get("path")
        return None

    def create_container(self, sandbox_id: str, sandbox_config: Any, name: str, image: str, command: list,
                         log_path: str = "") -> str:
        pb = self.pb
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
                                    command=command, log_path=log_path)
        return self.rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config,
                                                                 sandbox_config=sandbox_config),
                                       timeout=self.timeout).container_id

    def start_container(self, container_id: str) -> None:
        self.rt.StartContainer(self.pb.StartContainerRequest(container_id=container_id), timeout=self.timeout)

    def exec_sync(self, container_id: str, cmd: list, timeout: int = 10) -> Dict[str, Any]:
        reply = self.rt.ExecSync(self.pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout),
                                 timeout=self.timeout)
        return {"stdout": reply.stdout.decode(), "stderr": reply.stderr.decode(), "exit_code": reply.exit_code}
