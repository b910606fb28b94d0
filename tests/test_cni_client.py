"""The ``dpdkeni-cni`` binary runtimes execute (native/cni_client.c) and its Python twin ``dpdkeni-cni-py``: the
exact request line the server decodes, the reply relayed byte for byte with its exit status, the in-process
fallback when no server answers, and no call handed to a server that is not root. Servers here are stand-ins on
real unix sockets, so each side of the protocol is checked on its own."""
import json
import os
import select
import socket
import subprocess
import sys
import threading

import pytest

from conftest import needs_root
from cnirun import DPDKENI_CNI

from dpdkeni.cni_client import decode_request

BIN_DIR = os.path.dirname(DPDKENI_CNI)
CLIENTS = [DPDKENI_CNI, os.path.join(BIN_DIR, "dpdkeni-cni-py")]


def _env(sock_path, **extra):
    env = {"PATH": os.environ["PATH"], "HOME": "/nonexistent", "CNI_COMMAND": "VERSION",
           "DPDKENI_CNI_SOCKET": sock_path, "UNRELATED": "not passed"}
    env.update(extra)
    return env


class StandInServer:
    """Accepts one connection on ``path``, keeps the request line, answers ``reply`` (bytes; None: close)."""

    def __init__(self, path, reply):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.settimeout(20)
        self.reply, self.request = reply, None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(20)
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.request = data
            if self.reply is not None:
                try:
                    conn.sendall(self.reply)
                except OSError:  # a client that stopped reading (a reply over its cap)
                    return
                # the connection stays open until the client hangs up: a client must stop at the reply's
                # newline (as dpdkeni.cni_client does), not wait for the server to close
                poller = select.poll()
                poller.register(conn, select.POLLHUP)
                poller.poll(15000)

    def close(self):
        self.thread.join(30)
        self.sock.close()


def test_the_installed_binary_is_the_c_client_and_its_fallback_is_beside_it():
    with open(DPDKENI_CNI, "rb") as f:
        assert f.read(4) == b"\x7fELF", "dpdkeni-cni must be the compiled client, not a Python script"
    assert os.access(CLIENTS[1], os.X_OK)


@pytest.mark.parametrize("client", CLIENTS, ids=["c", "py"])
def test_request_is_the_protocol_line_and_the_reply_is_relayed(tmp_path, client):
    """What the server decodes: CNI_*, DPDKENI_* and PATH (nothing else), the configuration bytes exactly
    (non-ASCII, quotes, control characters); what the runtime gets: the server's stdout and exit status."""
    path = str(tmp_path / "cni.sock")
    stdout = 'line "one"\n\\ tab\t snowman \u2603 \U0001F600\n'
    server = StandInServer(path, json.dumps({"rc": 3, "stdout": stdout}).encode() + b"\n")
    config = '{"cniVersion": "1.0.0", "name": "n\u00e9t", "x": "a\\"b\\u0001"}\n'.encode()
    env = _env(path, CNI_COMMAND="ADD", CNI_ARGS='K8S_POD_NAME=p;Q="x\\y"', DPDKENI_STATE_DIR="/run/x",
               CNI_NETNS="/run/netns/\u00e9", DPDKENI_NOTE="tab\there\x1f")
    proc = subprocess.run([client], input=config, env=env, capture_output=True, timeout=10)
    server.close()
    assert proc.returncode == 3, proc
    assert proc.stdout.decode() == stdout
    assert server.request.endswith(b"\n") and server.request.count(b"\n") == 1
    got_env, got_stdin = decode_request(server.request)
    assert got_stdin == config
    assert got_env == {k: v for k, v in env.items() if k.startswith(("CNI_", "DPDKENI_")) or k == "PATH"}


@pytest.mark.parametrize("client", CLIENTS, ids=["c", "py"])
def test_a_server_that_closes_without_reply_is_error_11(tmp_path, client):
    path = str(tmp_path / "cni.sock")
    server = StandInServer(path, None)
    proc = subprocess.run([client], input=b'{"cniVersion": "0.4.0", "name": "n"}', env=_env(path, CNI_COMMAND="ADD"),
                          capture_output=True, timeout=30)
    server.close()
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["code"] == 11 and doc["cniVersion"] == "0.4.0" and "closed the connection" in doc["msg"]


@pytest.mark.parametrize("client", CLIENTS, ids=["c", "py"])
def test_no_server_runs_the_plugin_in_process(tmp_path, client):
    """No socket at the path: the call is answered by the Python plugin itself (VERSION needs no root)."""
    proc = subprocess.run([client], input=b'{"cniVersion": "0.4.0"}', env=_env(str(tmp_path / "none.sock")),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc
    doc = json.loads(proc.stdout)
    assert doc["cniVersion"] == "0.4.0" and "1.1.0" in doc["supportedVersions"]


def test_a_symlinked_binary_still_finds_its_fallback(tmp_path):
    """Runtimes run plugins from their own bin dir (``ln -s $(command -v dpdkeni-cni) /opt/cni/bin/``)."""
    link = tmp_path / "bin" / "dpdkeni-cni"
    link.parent.mkdir()
    link.symlink_to(DPDKENI_CNI)
    env = {**_env(str(tmp_path / "none.sock")), "PATH": "/usr/bin:/bin"}  # the venv is not on PATH
    proc = subprocess.run([str(link)], input=b'{"cniVersion": "1.0.0"}', env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout)["cniVersion"] == "1.0.0", proc


IMPOSTER = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1); s.settimeout(30)
print("listening", flush=True)
conn, _ = s.accept()
conn.settimeout(10)
data = b""
try:
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    if data:
        conn.sendall(b'{"rc": 0, "stdout": "IMPOSTER\\n"}\n')
except OSError:
    pass
print(len(data), flush=True)
"""


@needs_root
@pytest.mark.parametrize("client", CLIENTS, ids=["c", "py"])
def test_a_server_that_is_not_root_never_sees_the_call(nobody_dir, client):
    """Someone (uid 65534) listens on the socket path: SO_PEERCRED says it is not root, so the client sends it
    nothing and answers CNI error 5, both clients in the same words (the plugin is not run in its place)."""
    path = os.path.join(nobody_dir, "cni.sock")
    imposter = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                                 "-I", "-S", "-c", IMPOSTER, path], stdout=subprocess.PIPE, text=True)
    try:
        assert imposter.stdout.readline().strip() == "listening"
        proc = subprocess.run([client], input=b'{"cniVersion": "1.0.0"}', env=_env(path), capture_output=True,
                              timeout=60)
        received = imposter.stdout.readline().strip()
    finally:
        imposter.kill()
        imposter.wait()
    assert received == "0", "the imposter got the request"
    assert proc.returncode == 1, proc
    assert json.loads(proc.stdout) == {
        "cniVersion": "1.0.0", "code": 5,
        "msg": f"the process listening on {path} (pid {imposter.pid}) is uid 65534, not root: "
               "not sending it the configuration"}, proc


@pytest.mark.parametrize("client", CLIENTS, ids=["c", "py"])
def test_the_socket_defaults_to_the_state_dirs(tmp_path, client):
    """No DPDKENI_CNI_SOCKET: the server is looked for at <DPDKENI_STATE_DIR>/cni.sock. (The C client runs as a
    copy with no fallback beside it, so the in-process plugin cannot answer in its place.)"""
    import shutil

    if client == DPDKENI_CNI:
        (tmp_path / "bin").mkdir()
        client = shutil.copy(DPDKENI_CNI, tmp_path / "bin" / "dpdkeni-cni")
    server = StandInServer(str(tmp_path / "cni.sock"), b'{"rc": 0, "stdout": "found\\n"}\n')
    env = {k: v for k, v in _env("").items() if k != "DPDKENI_CNI_SOCKET"}
    proc = subprocess.run([str(client)], input=b"{}", env={**env, "DPDKENI_STATE_DIR": str(tmp_path),
                                                          "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=10)
    server.close()
    assert proc.returncode == 0 and proc.stdout == b"found\n", proc


@pytest.mark.parametrize("client", CLIENTS, ids=["c", "py"])
def test_an_empty_state_dir_variable_means_the_default_not_the_working_directory(tmp_path, client):
    """DPDKENI_STATE_DIR="" is the default state dir (as statedir.path), never a relative ``cni.sock``: a listener
    in the client's working directory is not asked. (The C client runs as a copy with no fallback beside it, so
    it ends in its own error instead of the in-process plugin.)"""
    import shutil

    if client == DPDKENI_CNI:
        (tmp_path / "bin").mkdir()
        client = shutil.copy(DPDKENI_CNI, tmp_path / "bin" / "dpdkeni-cni")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "cni.sock"))
    listener.listen(1)
    try:
        env = {k: v for k, v in _env("").items() if k != "DPDKENI_CNI_SOCKET"}
        proc = subprocess.run([str(client)], input=b'{"cniVersion": "1.0.0"}', cwd=tmp_path,
                              env={**env, "DPDKENI_STATE_DIR": "", "PATH": "/usr/bin:/bin"}, capture_output=True,
                              timeout=20)
        asked = select.select([listener], [], [], 0)[0]
    finally:
        listener.close()
    assert not asked, "the client connected to ./cni.sock"
    assert proc.stdout, proc


@pytest.mark.parametrize("client", CLIENTS, ids=["c", "py"])
@pytest.mark.parametrize("reply, rc, stdout", [
    (b'{"rc": 2}\n', 2, b""),  # no stdout: an empty one
    (b'{"rc": "0", "stdout": "x"}\n', None, None),  # rc not an integer
    (b'{"rc": 0, "stdout": 7}\n', None, None),  # stdout not a string
    (b'{"rc": 0, "stdout": "' + b"x" * (16 << 20) + b'"}\n', None, None),  # over the 16 MiB reply cap
], ids=["no-stdout", "rc-string", "stdout-number", "over-cap"])
def test_both_clients_judge_a_reply_alike(tmp_path, client, reply, rc, stdout):
    """A reply the Python client would not relay is error 11 from both; one without stdout relays its status."""
    path = str(tmp_path / "cni.sock")
    server = StandInServer(path, reply)
    proc = subprocess.run([client], input=b'{"cniVersion": "1.0.0"}', env=_env(path), capture_output=True,
                          timeout=30)
    server.close()
    if rc is None:
        assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 11, proc.stdout[:200]
    else:
        assert (proc.returncode, proc.stdout) == (rc, stdout), proc
