"""The lab's control socket without a guest: requests, errors and malformed lines (the guest side is
tests/vm/test_lab_control.py)."""
import json
import socket
import threading
import types

import pytest

from dpdkeni.errors import Error
from dpdkeni.lab.control import ControlClient, ControlServer


def test_control_socket_answers_and_survives_bad_requests(tmp_path):
    path = str(tmp_path / "control.sock")
    server = ControlServer(types.SimpleNamespace(nics={}), path)  # no guest: only requests that need none
    server.open()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        client = ControlClient(path)
        assert client.call("nics") == []
        with pytest.raises(Error, match="lab: no plugged NIC 'x'"):
            client.call("unplug", nic="x")
        with pytest.raises(Error, match="unknown op 'bogus'"):
            client.call("bogus")
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(path)
        with raw, raw.makefile("rb") as f:
            for line in (b"not json\n", b"[1]\n"):
                raw.sendall(line)
                assert "error" in json.loads(f.readline())
        assert client.call("down") == {"stopping": True}
        client.close()
    finally:
        server.stop.set()
        thread.join(10)
    assert not thread.is_alive() and not (tmp_path / "control.sock").exists()


def test_control_socket_refuses_other_users(open_dir):
    """The socket is 0600: a process of another user (a real uid 65534 one) cannot even connect, in a directory
    it may traverse; root can."""
    import errno
    import os
    from conftest import as_nobody
    path = os.path.join(open_dir, "control.sock")
    server = ControlServer(types.SimpleNamespace(nics={}), path)
    server.open()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        got = as_nobody("stream", path, b'{"id": 1, "op": "down"}\n')
        assert got == {"errno": errno.EACCES, "reply": None}
        assert not server.stop.is_set()  # the request never arrived
        assert os.stat(path).st_mode & 0o777 == 0o600
        client = ControlClient(path)
        assert client.call("nics") == []
        client.close()
    finally:
        server.stop.set()
        thread.join(10)
