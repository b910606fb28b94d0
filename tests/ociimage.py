#!/usr/bin/env python3
"""A minimal OCI image made here, without a registry: one layer holding Debian's busybox-static as
``/bin/busybox`` (and ``/bin/sh``, ``/bin/sleep``, ``/bin/ip`` links to it), written as an OCI image layout tarball
that ``ctr images import`` and ``podman load`` accept. It serves as a pause (sandbox) image: its entrypoint
sleeps until the runtime kills it.

    python3 tests/ociimage.py OUT.tar [--name docker.io/library/dpdkeni-pause:1]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import tarfile
from typing import Dict, List, Tuple

BUSYBOX = "/bin/busybox"  # Debian busybox-static
DEFAULT_NAME = "docker.io/library/dpdkeni-pause:1"
APPLETS = ("sh", "sleep", "ip", "cat", "ls")
DIRS = ("bin", "dev", "dev/shm", "etc", "proc", "sys", "tmp", "run")
EMPTY_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")  # bind-mount targets on a read-only root
EPOCH = 1700000000  # fixed mtimes: the same image, the same digests


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname, info.mtime = kind, mode, size, link, EPOCH
    return info


def layer_tar(busybox: str = BUSYBOX) -> bytes:
    """The single layer, uncompressed."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in DIRS:
            tar.addfile(_info(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
        for f in EMPTY_FILES:
            tar.addfile(_info(f, tarfile.REGTYPE, 0o644), io.BytesIO(b""))
        with open(busybox, "rb") as f:
            data = f.read()
        tar.addfile(_info("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for applet in APPLETS:
            tar.addfile(_info(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
    return out.getvalue()


def _blob(blobs: Dict[str, bytes], data: bytes) -> Tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return digest, len(data)


def image_layout(name: str = DEFAULT_NAME, entrypoint: List[str] = ("/bin/sleep", "1000000"),
                 busybox: str = BUSYBOX) -> Dict[str, bytes]:
    """The files of an OCI image layout (path -> content) for one linux/amd64 image called ``name``."""
    blobs: Dict[str, bytes] = {}
    layer = layer_tar(busybox)
    layer_digest, layer_size = _blob(blobs, layer)
    config = {"architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
              "config": {"Entrypoint": list(entrypoint), "Env": ["PATH=/bin"], "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [layer_digest]}, "history": [{"created_by": "dpdkeni tests"}]}
    config_digest, config_size = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                           "size": config_size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                            "size": layer_size}]}
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
                            "size": manifest_size, "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"io.containerd.image.name": name,
                                            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}]}
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index).encode()}
    files.update({f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()})
    return files


def write_archive(path: str, name: str = DEFAULT_NAME, entrypoint: List[str] = ("/bin/sleep", "1000000"),
                  busybox: str = BUSYBOX) -> str:
    """Write the image as an OCI layout tarball at ``path``; returns ``path``."""
    files = image_layout(name, entrypoint, busybox)
    with tarfile.open(path, "w") as tar:
        tar.addfile(_info("blobs", tarfile.DIRTYPE, 0o755))
        tar.addfile(_info("blobs/sha256", tarfile.DIRTYPE, 0o755))
        for rel, data in sorted(files.items()):
            tar.addfile(_info(rel, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--name", default=DEFAULT_NAME)
    args = parser.parse_args()
    if not os.path.exists(BUSYBOX):
        parser.error(f"{BUSYBOX} missing: apt-get install busybox-static")
    write_archive(args.out, args.name)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
