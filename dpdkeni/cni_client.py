"""``dpdkeni-cni-py``: the Python twin of the C ``dpdkeni-cni`` (native/cni_client.c), which execs it when no
server answers: a thin client of the resident plugin when one runs, the whole plugin otherwise.

A runtime starts a CNI plugin for every pod network it adds or deletes; starting Python and importing pyroute2
costs most of a call. With ``dpdkeni cni serve`` running (as Multus runs its thick daemon), this client, which
imports only the standard library, hands the call over its socket (``$DPDKENI_CNI_SOCKET``, default
``<state dir>/cni.sock``) and prints the answer; the server runs :func:`dpdkeni.cni.main` on the same ``CNI_*``
environment and configuration. With no server it runs the plugin itself, so nothing changes for a node without
one.
"""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

SOCKET_ENV = "DPDKENI_CNI_SOCKET"
PASSED_ENV = ("CNI_", "DPDKENI_")  # what the plugin reads; PATH too (IPAM plugins are found through CNI_PATH)
TRY_AGAIN_LATER = 11  # the CNI spec's error code for a transient failure
IO_FAILURE = 5


def socket_path(environ: Optional[Mapping[str, str]] = None) -> str:
    """Where the resident plugin listens."""
    env = os.environ if environ is None else environ
    state = env.get("DPDKENI_STATE_DIR") or "/run/dpdkeni"
    return env.get(SOCKET_ENV) or os.path.join(state, "cni.sock")


def encode_request(environ: Mapping[str, str], stdin: bytes) -> bytes:
    """One request line: the plugin's environment and its configuration (base64: any bytes pass)."""
    env = {k: v for k, v in environ.items() if k.startswith(PASSED_ENV) or k == "PATH"}
    return json.dumps({"env": env, "stdin": base64.b64encode(stdin).decode()}).encode() + b"\n"


def decode_request(line: bytes) -> Tuple[Dict[str, str], bytes]:
    """The inverse of :func:`encode_request`."""
    req = json.loads(line)
    return dict(req["env"]), base64.b64decode(req["stdin"])


_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_REPLY = 16 << 20


def peer_cred(sock: socket.socket) -> Tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected unix socket (SO_PEERCRED)."""
    pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid, uid, gid


class NotRoot(Exception):
    """The process listening on the socket is not root: it gets no configuration."""


def read_line(sock: socket.socket, limit: int) -> bytes:
    """One reply line from ``sock`` (up to and with its newline, or what came before the peer closed), at most
    ``limit`` bytes: ValueError when the peer sends more (a reply is never read without a bound)."""
    with sock.makefile("rb") as f:
        line = f.readline(limit + 1)
    if len(line) > limit:
        raise ValueError(f"reply longer than {limit} bytes")
    return line


def _ask(path: str, request: bytes) -> Optional[Dict[str, Any]]:
    """The server's reply, or None when no server listens (then the caller runs the plugin itself); NotRoot when
    the listener is not root (checked with SO_PEERCRED before anything is sent)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except OSError:
            return None
        pid, uid, _ = peer_cred(sock)
        if uid != 0:
            raise NotRoot(f"the process listening on {path} (pid {pid}) is uid {uid}, not root: "
                          "not sending it the configuration")
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server stopped reading (a refused request): its reply may still be there
            pass
        try:
            line = read_line(sock, MAX_REPLY)
            reply = json.loads(line) if line else {}
        except (OSError, ValueError):
            return {}
        return reply if isinstance(reply, dict) else {}
    finally:
        sock.close()


def _version(stdin: bytes) -> str:
    try:
        return str(json.loads(stdin).get("cniVersion") or "1.1.0")
    except (ValueError, AttributeError):
        return "1.1.0"


def run() -> None:
    """Console-script entry point (``dpdkeni-cni-py``; the C ``dpdkeni-cni`` execs it when no server listens)."""
    stdin = sys.stdin.buffer.read()
    try:
        reply = _ask(socket_path(), encode_request(os.environ, stdin))
    except NotRoot as exc:
        reply = {"rc": 1, "stdout": json.dumps({"cniVersion": _version(stdin), "code": IO_FAILURE,
                                                "msg": str(exc)}) + "\n"}
    if reply is None:
        from . import cni
        cni._light_pyroute2()
        sys.exit(cni.main(os.environ, io.BytesIO(stdin)))
    if not isinstance(reply.get("rc"), int) or not isinstance(reply.get("stdout", ""), str):
        # the server went away in the middle of the call
        reply = {"rc": 1, "stdout": json.dumps({"cniVersion": _version(stdin), "code": TRY_AGAIN_LATER,
                                                "msg": "the dpdkeni cni server closed the connection"}) + "\n"}
    sys.stdout.write(reply.get("stdout", ""))
    sys.stdout.flush()
    sys.exit(int(reply["rc"]))
