"""``dpdkeni daemon status`` and ``--metrics``: checked against what happened (a NIC attached, one failed, one
reclaimed when its container died, one waiting), on this host with veth stand-ins and real processes."""
from __future__ import annotations

import json
import logging
import os

from conftest import as_nobody, needs_root, unique
from test_daemon import NO_MATCH_POLICY, _veth, daemon_in, prefix, running, wait_until  # noqa: F401  (fixtures)

from dpdkeni import daemon_status
from dpdkeni.events import Watcher

pytestmark = needs_root
log = logging.getLogger(__name__)


class RecordingWatcher(Watcher):
    """A real watcher that also keeps every event it hands out: what the ``events`` counter must equal."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.handed: list = []

    def poll(self, timeout=None):
        events = super().poll(timeout)
        self.handed.extend(events)
        return events


def _metrics(path):
    """{metric: value} of a textfile (comments skipped)."""
    with open(path) as f:
        return {line.split()[0]: float(line.split()[1]) for line in f if line.strip() and not line.startswith("#")}


def test_status_and_metrics_say_what_happened(state_dir, stand_in_models, container_factory, prefix, running,  # noqa: F811
                                               tmp_path, monkeypatch, cli):
    import dpdkeni.daemon as daemon_mod
    monkeypatch.setattr(daemon_mod, "METRICS_INTERVAL_S", 0.3)
    monkeypatch.setattr(daemon_mod, "TRIM_PERIOD_S", 0.3)
    textfile = tmp_path / "textfile"
    textfile.mkdir(mode=0o755)
    metrics = str(textfile / "dpdkeni.prom")
    box = container_factory()
    absent = unique("dkabs")
    policy = (f'[[rule]]\nname = "ok"\nmatch = {{ ifname = "{prefix}a" }}\ntarget = "{box.target}"\nifname = "eth5"\n'
              f'\n[[rule]]\nname = "bad"\nmatch = {{ ifname = "{prefix}f" }}\ntarget = "pid:2147483646"\n'
              f'\n[[rule]]\nname = "later"\nmatch = {{ ifname = "{prefix}w" }}\ntarget = "netns:{absent}"\n')
    mine = lambda nic: nic.model == "veth" and (nic.ifname or "").startswith(prefix)  # noqa: E731
    watcher = RecordingWatcher(source="kernel", models=mine, existing=True)
    daemon = running(policy, watcher, metrics=metrics)
    of = lambda name: [d["decision"] for d in daemon.decisions if d.get("nic") == f"if:{prefix}{name}"]  # noqa: E731
    with __import__("pyroute2").IPRoute() as ipr:
        for a, b in (("a", "b"), ("f", "g"), ("w", "x")):
            _veth(ipr, prefix + a, prefix + b)
    wait_until(lambda: of("a") == ["attached"] and of("f") == ["attach-failed"] and of("w") == ["waiting"],
               "attached, failed, waiting")
    out = cli("daemon", "status", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    why = next(d["why"] for d in daemon.decisions if d["decision"] == "waiting")
    assert doc["leases"] == [{"nic": f"if:{prefix}a", "mode": "netdev", "target": box.target, "state": "attached"}]
    assert doc["waiting"] == [{"nic": f"if:{prefix}w", "rule": "later", "why": why}]
    assert doc["counters"] == {"events": len(watcher.handed), "attached": 1, "failed": 1, "released": 0,
                               "reclaimed": 0}, (doc["counters"], watcher.handed)
    assert doc["pid"] == os.getpid() and doc["state"] == state_dir and doc["policy"] == "test.toml"
    assert [r.split(" ")[0] for r in doc["rules"]] == ["ok", "bad", "later"] and doc["uptime_s"] > 0

    box.kill()  # the container dies: its NIC is reclaimed
    # back on the host, the NIC matches its rule again: skipped, its target has exited
    wait_until(lambda: of("a") == ["attached", "released", "skip"], "the reclaim, and the NIC back skipped")
    wait_until(lambda: _metrics(metrics).get("dpdkeni_daemon_reclaimed_total") == 1, "the metrics with the reclaim")
    events = len(watcher.handed)
    out = cli("daemon", "status", "--json", "--last", "3")
    doc = json.loads(out.stdout)
    assert doc["counters"] == {"events": events, "attached": 1, "failed": 1, "released": 0, "reclaimed": 1}
    assert doc["leases"] == [] and doc["decisions"] == daemon.decisions[-3:]
    # idle between the events, at most once a period: the freed heap went back to the kernel
    rss = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS:"))
    assert doc["memory"]["trims"] >= 1 and abs(doc["memory"]["rss_kib"] - rss) < rss // 5, (doc["memory"], rss)
    assert [(d["decision"], d["nic"]) for d in doc["decisions"][-2:]] == [("released", f"if:{prefix}a"),
                                                                           ("skip", f"if:{prefix}a")]
    got = _metrics(metrics)
    assert {k: v for k, v in got.items() if k != "dpdkeni_daemon_uptime_seconds"} == {
        "dpdkeni_daemon_events_total": events, "dpdkeni_daemon_attached_total": 1,
        "dpdkeni_daemon_failed_total": 1, "dpdkeni_daemon_released_total": 0,
        "dpdkeni_daemon_reclaimed_total": 1, "dpdkeni_daemon_leases": 0, "dpdkeni_daemon_waiting": 1}, got
    assert oct(os.stat(metrics).st_mode & 0o777) == "0o644"
    assert sorted(os.listdir(textfile)) == ["dpdkeni.prom"]  # no temp file left behind

    human = cli("daemon", "status")
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"daemon pid {os.getpid()}, up ") and \
        lines[1] == f"counters: events={events} attached=1 failed=1 released=0 reclaimed=1", lines
    assert lines[2].startswith("memory: RSS ") and " MiB, freed heap returned " in lines[2], lines
    assert f"  if:{prefix}w rule later: {why}" in lines and "leases (0):" in lines


def test_status_is_answered_to_root_only(open_dir, monkeypatch, caplog, cli):
    """A real uid 65534 process, with the state dir and the socket opened up to it, gets nothing back (its
    request is read, then dropped and logged); root gets the document."""
    with daemon_in(open_dir, monkeypatch) as (_, state):
        sock = daemon_status.socket_path(state)
        wait_until(lambda: os.path.exists(sock), "status socket")
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        request = b'{"request": "status"}\n'
        assert as_nobody("stream", sock, request)["reply"] is None  # the 0700 state dir refuses it first
        os.chmod(state, 0o755)
        os.chmod(sock, 0o666)
        with caplog.at_level(logging.WARNING, logger="dpdkeni.daemon_status"):
            assert as_nobody("stream", sock, request) == {"errno": 0, "reply": ""}
        assert "uid 65534 refused (root only)" in caplog.text
        out = cli("daemon", "status", "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["counters"]["attached"] == 0
    assert not os.path.exists(daemon_status.socket_path(state))


def test_status_without_a_daemon_and_bad_metrics_paths_are_one_line(state_dir, tmp_path, cli):
    out = cli("daemon", "status")
    assert out.returncode == 1 and out.stderr.startswith(
        f"dpdkeni: error: no dpdkeni daemon answers on {state_dir}/daemon-status.sock") and \
        len(out.stderr.splitlines()) == 1, out.stderr
    policy = tmp_path / "p.toml"
    policy.write_text(NO_MATCH_POLICY)
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(real)
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    for path, why in ((str(real / "m.txt"), "must be named *.prom"),
                      (str(tmp_path / "link" / "m.prom"), f"metrics directory {tmp_path}/link: "),
                      (str(loose / "m.prom"), "is not safe to write in (uid 0, mode 0777)"),
                      (str(tmp_path / "none" / "m.prom"), "No such file or directory")):
        out = cli("daemon", "--policy", str(policy), "--metrics", path, "--source", "kernel")
        assert out.returncode == 2 and why in out.stderr and len(out.stderr.splitlines()) == 1, (path, out.stderr)
    assert not os.path.exists(os.path.join(state_dir, "daemon.lock"))  # refused before anything started
    assert os.listdir(real) == [] and os.listdir(loose) == []


def test_a_status_reply_is_read_with_a_bound(state_dir, cli):
    """Whatever answers on the status socket (root's, so it is asked), its reply is read up to MAX_REPLY: one
    that goes on past it is refused with one line, and one that is not JSON too; neither is held in memory."""
    import socket
    import threading
    path = daemon_status.socket_path(state_dir)
    endless = 16 * daemon_status.MAX_REPLY       # bytes sent at most, unless the client closes first
    for reply, why in ((b"x" * 65536, "sent a status reply over 16 MiB: not reading it"),
                       (b"not json\n", "sent no status (connection closed)")):
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(1)
        sent = [0]

        def answer(srv=srv, reply=reply, sent=sent):
            conn, _ = srv.accept()
            with conn:
                conn.makefile("rb").readline()
                try:
                    while sent[0] < (endless if len(reply) > 9 else len(reply)):
                        sent[0] += conn.send(reply)
                except OSError:  # the client stopped reading at its bound and closed
                    pass

        th = threading.Thread(target=answer, daemon=True)
        th.start()
        try:
            out = cli("daemon", "status")
        finally:
            th.join(30)
            srv.close()
            os.unlink(path)
        assert out.returncode == 1 and len(out.stderr.splitlines()) == 1 and \
            out.stderr.startswith(f"dpdkeni: error: the daemon on {path} {why}"), out.stderr
        # the client stopped at its bound: what the server got out is the bound plus the sockets' buffers
        assert sent[0] < daemon_status.MAX_REPLY + (8 << 20), sent[0]
