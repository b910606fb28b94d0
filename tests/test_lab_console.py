"""The lab's console watcher and the fail-fast path of its clients, without a guest: a console log written by the
test, and a real unix socket peer that never answers (the guest side is tests/vm/test_lab_wedge.py)."""
import os
import socket
import threading
import time

import pytest

from dpdkeni.errors import Error, GuestFaultError
from dpdkeni.lab.agent import AgentClient, AgentError
from dpdkeni.lab.console import ConsoleWatch, classify
from dpdkeni.lab.qemu import CpuSetup

# lines a 6.1 guest printed when it wedged, and ordinary lines that must not count
FAULTS = {
    "[  183.411302] watchdog: BUG: soft lockup - CPU#0 stuck for 44s! [runc:382]": "soft lockup",
    "[  201.100000] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:": "RCU stall",
    "[    3.000000] Kernel panic - not syncing: Attempted to kill init!": "kernel panic",
    "[   12.000000] BUG: unable to handle page fault for address: 0000000000001234": "kernel BUG",
    "[   12.000001] Oops: 0000 [#1] PREEMPT SMP NOPTI": "kernel Oops",
    "[   40.000000] NMI watchdog: Watchdog detected hard LOCKUP on cpu 1": "hard lockup",
}
ORDINARY = [
    "[    1.234567] virtio_net virtio1 enp1s0: renamed from eth0",
    "lab-agent: guest ready",
    "[    2.000000] BUGGY firmware? no: this is not a fault",
    "[    5.000000] NMI watchdog: Enabled. Permanently consumes one hw-PMU counter.",
    "[    5.100000] rcu: Hierarchical RCU implementation.",
]


@pytest.mark.parametrize("line,kind", sorted(FAULTS.items()))
def test_fault_lines_are_classified(line, kind):
    assert classify(line) == kind


@pytest.mark.parametrize("line", ORDINARY)
def test_ordinary_lines_are_not_faults(line):
    assert classify(line) is None


def test_watch_reports_the_first_fault_once_with_the_lines_around_it(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("".join(f"boot line {i}\n" for i in range(30)))
    seen = []
    watch = ConsoleWatch(str(log), seen.append, pending=lambda: "run `runc run -d x`", interval=0.05,
                         offset=os.path.getsize(log) // 2).start()
    try:
        time.sleep(0.3)
        assert seen == [] and watch.fault is None
        with open(log, "a") as f:
            f.write("before 1\nbefore 2\n[  183.4] watchdog: BUG: soft lockup - CPU#0 stuck for 44s! [runc:382]\n")
            f.write("RIP: 0010:asm_exc_int3+0x0/0x40\n")
            f.flush()
            time.sleep(0.3)
            f.write("[  201.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\ncall trace line\n")
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watch.stop()
    assert len(seen) == 1, seen
    fault = seen[0]
    assert isinstance(fault, GuestFaultError) and fault.kind == "soft lockup"
    assert fault.line == "[  183.4] watchdog: BUG: soft lockup - CPU#0 stuck for 44s! [runc:382]"
    assert str(fault).startswith("lab: the guest kernel wedged (soft lockup) during run `runc run -d x`: "
                                 "[  183.4] watchdog: BUG: soft lockup")
    assert "\n" not in str(fault)             # one line for the CLI; the story is in .excerpt
    excerpt = fault.excerpt.splitlines()
    at = excerpt.index(fault.line)
    assert at == 10 and excerpt[:at] == [f"boot line {i}" for i in range(22, 30)] + ["before 1", "before 2"]
    assert "RIP: 0010:asm_exc_int3+0x0/0x40" in excerpt and "call trace line" in excerpt
    assert watch.fault is fault


def _silent_peer(path):
    """A unix socket server that accepts one connection, reads, and never answers."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    held = []

    def accept():
        conn, _ = srv.accept()
        held.append(conn)
        while conn.recv(4096):
            pass

    threading.Thread(target=accept, daemon=True).start()
    return srv, held


def test_fail_ends_a_call_in_flight_at_once_and_every_later_call(tmp_path):
    path = str(tmp_path / "agent.sock")
    srv, held = _silent_peer(path)
    client = AgentClient(path)
    fault = GuestFaultError("soft lockup", "BUG: soft lockup - CPU#1 stuck for 22s! [runc:9]", "x")
    errors = []

    def call():
        try:
            client.run(["runc", "run", "-d", "c1"], timeout=120)
        except Error as exc:
            errors.append((exc, time.monotonic()))

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while not client.doing() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.doing() == "run `runc run -d c1`"
    failed_at = time.monotonic()
    client.fail(fault)
    thread.join(5)
    assert not thread.is_alive()
    assert errors and errors[0][0] is fault and errors[0][1] - failed_at < 1.0
    with pytest.raises(GuestFaultError):
        client.call("ping")
    client.close()
    srv.close()


def test_no_reply_names_the_request_and_the_last_console_lines(tmp_path):
    path = str(tmp_path / "agent.sock")
    srv, held = _silent_peer(path)
    client = AgentClient(path, context=lambda: "[ 9.0] last thing the guest said")
    with pytest.raises(AgentError) as info:
        client.call("run", timeout=0.5, argv=["dpdkeni", "list"], limit=120)
    assert str(info.value) == ("guest agent: no reply to run `dpdkeni list` within 0s; the guest console's last "
                               "lines:\n[ 9.0] last thing the guest said")
    client.close()
    srv.close()


def test_agent_call_timeouts_are_sized_to_the_request(tmp_path, monkeypatch):
    path = str(tmp_path / "agent.sock")
    srv, held = _silent_peer(path)
    client = AgentClient(path)
    asked = []
    monkeypatch.setattr(client, "request", lambda msg, what, timeout: asked.append((what, timeout)) or {})
    client.call("ping")
    client.call("poll", handle=1)
    client.call("wait_net", mac="52:54:00:00:00:01", limit=60)
    client.call("run", argv=["true"], limit=7)
    assert asked == [("ping", 5.0), ("poll", 15.0), ("wait_net", 75.0), ("run `true`", 22.0)]
    client.close()
    srv.close()


def test_cpu_setup_arguments_and_refusals():
    assert CpuSetup().argv("tcg") == ["-accel", "tcg,thread=single", "-cpu", "max", "-smp", "2"]
    assert CpuSetup("multi", "Nehalem", 1).argv("tcg") == ["-accel", "tcg,thread=multi", "-cpu", "Nehalem",
                                                          "-smp", "1"]
    assert CpuSetup().argv("kvm") == ["-accel", "kvm", "-cpu", "host", "-smp", "2"]
    with pytest.raises(Error, match="neither 'single' nor 'multi'"):
        CpuSetup(thread="many")
    with pytest.raises(Error, match="outside 1..8"):
        CpuSetup(cpus=0)


def test_heartbeat_fails_a_call_in_flight_when_the_guest_goes_silent(tmp_path):
    from dpdkeni.lab.heartbeat import Heartbeat
    path = str(tmp_path / "agent.sock")
    srv, held = _silent_peer(path)
    client = AgentClient(path)
    silent = []

    def on_silence(fault):
        silent.append(fault)
        client.fail(fault)

    beat = Heartbeat(client, on_silence, context=lambda: "[ 7.0] last words", silence=1.0, interval=0.2).start()
    try:
        time.sleep(0.6)
        assert silent == []                                 # idle: nothing in flight, no pings, no verdict
        started = time.monotonic()
        with pytest.raises(GuestFaultError) as info:
            client.run(["runc", "run", "-d", "c2"], timeout=300)
        assert time.monotonic() - started < 5               # not the command's 300 s
    finally:
        beat.stop()
    assert len(silent) == 1 and info.value is silent[0]
    assert str(info.value).startswith("lab: the guest kernel wedged (no answer) during run `runc run -d c2`: "
                                      "the guest agent did not answer a ping for 1s")
    assert info.value.excerpt == "[ 7.0] last words"
    client.close()
    srv.close()


def test_heartbeat_leaves_a_guest_that_answers_alone(tmp_path):
    """A peer that answers pings but not the long request: no verdict."""
    import json as _json
    from dpdkeni.lab.heartbeat import Heartbeat
    path = str(tmp_path / "agent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        with conn, conn.makefile("rb") as f:
            for line in f:
                msg = _json.loads(line)
                if msg["op"] == "ping":
                    conn.sendall(_json.dumps({"id": msg["id"], "pid": 1}).encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    client = AgentClient(path)
    silent = []
    beat = Heartbeat(client, silent.append, silence=1.0, interval=0.1).start()
    try:
        with pytest.raises(AgentError, match="no reply to run `sleep 9` within 2s"):
            client.call("run", timeout=2, argv=["sleep", "9"], limit=9)
    finally:
        beat.stop()
    assert silent == []
    client.close()
    srv.close()
