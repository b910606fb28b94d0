"""Hostile and mistaken input (issue 17): targets that are not containers, the host's own namespace, malformed NIC
specs, what a server may unlink, the state dir, the CNI server's limits. Real objects throughout: veth stand-in
NICs, real cgroups, symlinks and modes, unix sockets, unprivileged processes (setpriv)."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from pyroute2 import IPRoute

from conftest import needs_root, unique
from cnirun import run_cni
from test_handoff import host_state

from dpdkeni import cni, statedir, unixsock
from dpdkeni.errors import InputError, NotFoundError
from dpdkeni.ledger import Ledger
from dpdkeni.netns import container_pid, names_container, resolve_target

pytestmark = [needs_root]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def nic_state(name):
    """The stand-in as the host sees it (None once it left the host's namespace)."""
    return host_state(name)


@pytest.fixture
def stand_in(state_dir, stand_in_models, veth_factory):
    """A veth stand-in NIC in the host's namespace with an address of its own; returns its name."""
    nic, _ = veth_factory()
    with IPRoute() as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname=nic)[0], address="198.18.97.1", prefixlen=30)
    return nic


def _attach(cli, nic, target, *extra):
    return cli("attach", nic, "--to", target, "--ifname", "dkhostile", "--address", "198.18.99.2/24",
               "--gateway", "198.18.99.1", *extra)


def _one_error_line(r, *fragments):
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpdkeni: error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# --- container ids --------------------------------------------------------------------------------------------


@pytest.fixture
def host_process_in_cgroup():
    """``make(name)``: a process in the host's network namespace, put into a real cgroup (pids hierarchy) whose
    last component is ``name`` under a parent unique to the test; killed and removed at teardown."""
    made = []

    def make(name, parent=None):
        base = os.path.join("/sys/fs/cgroup/pids", parent or unique("dkcg"))
        path = os.path.join(base, name)
        os.makedirs(path)
        proc = subprocess.Popen(["sleep", "120"])
        made.append((proc, path, base))
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        return proc

    yield make
    for proc, path, base in made:
        proc.kill()
        proc.wait()
        for d in (path, base):
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


@pytest.mark.parametrize("cid,word", [
    ("memory", "not found: looked for ID=memory in /run/runc"),
    ("pids", "not found: looked for ID=pids in /run/runc"),
    ("init.scope", "not found: looked for ID=init.scope in /run/runc"),
    ("../../../../proc/1", "bad container id '../../../../proc/1'"),
])
def test_container_ids_that_name_no_container_are_refused_nic_untouched(cli, stand_in, host_process_in_cgroup,
                                                                        cid, word):
    """Every process has 'memory' and 'pids' in its cgroup file and pid 1 is in init.scope; a host process in a
    real cgroup named init.scope makes that case bite here too. None of them is a container."""
    host_process_in_cgroup("init.scope")
    before = nic_state(stand_in)
    r = _attach(cli, stand_in, f"container:{cid}")
    assert r.returncode == 2, r.stderr
    line = _one_error_line(r, word)
    if "not found" in word:
        assert "and for a process in a cgroup docker-ID.scope or libpod-ID.scope" in line
    assert nic_state(stand_in) == before and Ledger().leases() == {}


def test_a_container_scope_is_found_by_its_whole_cgroup_component(container_factory, host_process_in_cgroup):
    cid = os.urandom(32).hex()
    c = container_factory()
    cg = os.path.join("/sys/fs/cgroup/pids", unique("dkcg"), f"docker-{cid}.scope")
    os.makedirs(cg)
    try:
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(c.pid))
        assert container_pid(cid) == c.pid
        t = resolve_target(f"container:{cid}")
        assert t.pid == c.pid and t.ns_id == os.readlink(f"/proc/{c.pid}/ns/net")
        with pytest.raises(NotFoundError):           # a prefix of the id is a substring, not the id
            container_pid(cid[:12])
    finally:
        c.kill()
        os.rmdir(cg)
        os.rmdir(os.path.dirname(cg))


@pytest.mark.parametrize("path,cid,found", [
    ("/system.slice/docker-abc123.scope", "abc123", True),
    ("/machine.slice/libpod-abc123.scope/container", "abc123", True),
    ("/kubepods/besteffort/pod1/abc123", "abc123", True),
    ("/docker/abc123", "abc123", True),
    ("/init.scope", "init.scope", False),
    ("/", "memory", False),
    ("/dk/abc123", "abc123", False),
    ("/system.slice/docker-abc1234.scope", "abc123", False),
    ("/system.slice/xdocker-abc123.scope", "abc123", False),
])
def test_names_container_takes_whole_components_only(path, cid, found):
    assert names_container(path, cid) is found


def test_runtime_state_files_are_read_safely(tmp_path, container_factory):
    c = container_factory()
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "state.json").write_text(json.dumps({"init_process_pid": c.pid}))
    assert container_pid("good", state_dirs=[str(tmp_path)]) == c.pid
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "state.json").write_text("{not json")
    (tmp_path / "linked").mkdir()
    os.symlink(str(tmp_path / "good" / "state.json"), str(tmp_path / "linked" / "state.json"))
    for cid in ("garbage", "linked"):          # unreadable or a symlink: names no process, and no traceback
        with pytest.raises(NotFoundError, match=f"container '{cid}' not found: looked for ID={cid} in {tmp_path}"):
            container_pid(cid, state_dirs=[str(tmp_path)])


# --- the host's own namespace -----------------------------------------------------------------------------------


@pytest.fixture
def host_sleeper():
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("target", ["pid:1", "/proc/self/ns/net", "/proc/1/ns/net", "/proc/./1//ns/net",
                                    "pid:SLEEPER", "/proc/SLEEPER/ns/net"])
def test_the_host_namespace_is_never_a_target(cli, stand_in, host_sleeper, target):
    """pid 1's namespace and dpdkeni's own (a process of the host, /proc/self of the CLI): exit 2, nothing
    moved, renamed or addressed on the host (before the fix, /proc/self/ns/net renamed the NIC on the host and
    left the address there after release)."""
    target = target.replace("SLEEPER", str(host_sleeper.pid))
    before = nic_state(stand_in)
    r = _attach(cli, stand_in, target)
    assert r.returncode == 2, (r.stdout, r.stderr)
    _one_error_line(r, f"target {target} is the host's own network namespace")
    assert nic_state(stand_in) == before and Ledger().leases() == {}
    with IPRoute() as ipr:
        assert not ipr.link_lookup(ifname="dkhostile")


def test_library_refuses_the_host_namespace_even_as_a_target_object(stand_in):
    from dpdkeni import handoff
    from dpdkeni.netns import Target

    before = nic_state(stand_in)
    own = Target("mine", f"/proc/{os.getpid()}/ns/net", os.readlink("/proc/self/ns/net"))
    with pytest.raises(InputError, match="is the host's own network namespace"):
        handoff.attach(stand_in, own, ifname="dkhostile", addresses=["198.18.99.2/24"])
    assert nic_state(stand_in) == before and Ledger().leases() == {}


@pytest.mark.parametrize("netns", ["/proc/1/ns/net", "/proc/self/ns/net"])
def test_cni_add_into_the_host_namespace_is_error_4(stand_in, netns):
    before = nic_state(stand_in)
    conf = {"cniVersion": "1.0.0", "name": "hostile", "type": "dpdkeni-cni", "device": stand_in,
            "addresses": ["198.18.99.2/24"], "gateway": "198.18.99.1"}
    run = run_cni("ADD", conf, netns=netns, ifname="dkhostile")
    assert run.returncode == 1 and run.doc["code"] == 4, run
    assert run.doc["msg"].startswith(f"CNI_NETNS: target {netns} is the host's own network namespace"), run.doc
    assert nic_state(stand_in) == before and Ledger().leases() == {}
    assert not os.listdir(os.path.join(os.environ["DPDKENI_STATE_DIR"], "cni")) \
        if os.path.isdir(os.path.join(os.environ["DPDKENI_STATE_DIR"], "cni")) else True


# --- NIC specs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["release", "zz:zz.z"], ["release", "0000:00:03.0", "zz:zz.z"],
                                  ["show", "zz:zz.z"], ["bind", "zz:zz.z", "--dry-run"],
                                  ["unbind", "zz:zz.z", "--dry-run"], ["attach", "zz:zz.z", "--to", "pid:2"],
                                  ["release", "52:54:00:zz:00:01"], ["release", "a/b"]])
def test_a_malformed_nic_spec_is_exit_2(cli, state_dir, argv):
    r = cli(*argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "malformed" in r.stderr or "bad interface name" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "zz:zz.z is not leased" not in r.stderr


def test_release_of_a_well_formed_absent_nic_stays_idempotent(cli, state_dir):
    r = cli("release", "0000:00:1f.7")
    assert r.returncode == 0 and r.stderr == "0000:00:1f.7 is not leased; nothing to do\n"


# --- sockets ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_cni_serve_never_replaces_what_is_not_a_socket(cli, state_dir, tmp_path, kind):
    path = tmp_path / "precious"
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    if kind == "file":
        path.write_text("keep me\n")
    elif kind == "dir":
        path.mkdir()
    else:
        os.symlink(str(victim), str(path))
    r = cli("cni", "serve", "--socket", str(path), timeout=20)
    assert r.returncode == 2
    _one_error_line(r, f"{path} exists and is not a socket: not replacing it")
    assert os.path.lexists(path) and victim.read_text() == "keep me\n"
    if kind == "file":
        assert path.read_text() == "keep me\n"


def test_a_stale_socket_is_still_replaced(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()                                       # a socket file nobody listens on
    sock = unixsock.listen(path, "busy")
    try:
        assert unixsock.answers(path)
    finally:
        sock.close()
        os.unlink(path)


# --- the state dir ----------------------------------------------------------------------------------------------


def _bad_state_dirs(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    os.symlink(str(real), str(link))
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    groupw = tmp_path / "groupw"
    groupw.mkdir()
    os.chmod(groupw, 0o770)
    other = tmp_path / "nobodys"
    other.mkdir(mode=0o700)
    os.chown(other, 65534, 65534)
    afile = tmp_path / "afile"
    afile.write_text("")
    return {"symlink": (str(link), f"is a symlink (to {real})"),
            "1777": (str(sticky), "is writable by group or others (mode 1777)"),
            "0770": (str(groupw), "is writable by group or others (mode 0770)"),
            "nobody": (str(other), "is owned by uid 65534, not root"), "file": (str(afile), "is not a directory")}


@pytest.mark.parametrize("which", ["symlink", "1777", "0770", "nobody", "file"])
def test_a_bad_state_dir_is_refused_and_the_nic_stays_home(cli, stand_in, container_factory, tmp_path, which):
    path, why = _bad_state_dirs(tmp_path)[which]
    before = nic_state(stand_in)
    c = container_factory()
    for argv in (["attach", stand_in, "--to", c.target], ["leases"], ["release", stand_in], ["list"]):
        r = cli(*argv, env={"DPDKENI_STATE_DIR": path})
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        line = _one_error_line(r, f"state dir {path} {why}: refusing to use it", f"run 'rm -rf {path}'")
        assert "DPDKENI_STATE_DIR" in line
    assert nic_state(stand_in) == before
    assert not os.path.exists(os.path.join(path, "leases.json"))
    with pytest.raises(statedir.StateDirError):     # the library refuses it too
        Ledger(path).leases()


def test_whichever_module_comes_first_makes_the_state_dir_0700(tmp_path, monkeypatch):
    from dpdkeni import driver, hugepages

    for n, first in enumerate((lambda: Ledger().leases(), lambda: hugepages._pool_lock().__enter__(),
                               lambda: statedir.subdir("bound"), lambda: cni.save_record(
                                   cni._record_path("n", "c", "eth0"), {"nic": "x"}))):
        monkeypatch.setenv("DPDKENI_STATE_DIR", str(tmp_path / f"s{n}" / "state"))
        if n % 2:
            (tmp_path / f"s{n}").mkdir()          # the parent there already, or made on the way
        os.umask(0o022)
        first()
        st = os.lstat(tmp_path / f"s{n}" / "state")
        assert oct(st.st_mode & 0o7777) == "0o700", n
    assert driver._record_path("0000:00:04.0").startswith(str(tmp_path / "s3" / "state"))


def test_state_files_are_never_followed_through_a_symlink(state_dir, tmp_path):
    """A record, the ledger and a DHCP log that are symlinks to valid-looking files elsewhere: never read or
    written through (O_NOFOLLOW: ELOOP)."""
    victim = tmp_path / "victim"
    content = '{"nic": "victim", "leases": {}, "version": 1}'
    victim.write_text(content)
    path = cni._record_path("net", "ctr", "eth0")
    os.makedirs(os.path.dirname(path), mode=0o700)
    os.symlink(str(victim), path)
    with pytest.raises(cni.CniError, match="is unreadable") as err:
        cni.load_record(path)
    assert "Too many levels of symbolic links" in err.value.details
    cni.save_record(path, {"nic": "x"})           # replaces the link, never writes through it
    assert not os.path.islink(path) and oct(os.stat(path).st_mode & 0o777) == "0o600"
    ledger = Ledger(state_dir)
    os.symlink(str(victim), ledger.path)
    with pytest.raises(Exception, match="Too many levels of symbolic links"):
        ledger.leases()
    log = os.path.join(state_dir, "dhcp-x.log")
    os.symlink(str(victim), log)
    with pytest.raises(OSError, match="Too many levels"):
        with statedir.opened(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, text=False) as f:
            f.write(b"appended")
    assert victim.read_text() == content


def test_record_writes_from_many_threads_of_one_process_never_collide(state_dir):
    """cni serve runs a thread per call, all with one pid: temp names are unique per writer."""
    path = cni._record_path("net", "ctr", "eth0")
    errors = []

    def writer(n):
        try:
            for i in range(40):
                cni.save_record(path, {"writer": n, "i": i, "pad": "x" * 4000})
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(repr(exc))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and cni.load_record(path)["i"] == 39
    assert sorted(os.listdir(os.path.dirname(path))) == [os.path.basename(path)]


def test_cni_record_names_cannot_collide_by_truncation(state_dir):
    a, b = "c" * 300 + "1", "c" * 300 + "2"
    assert cni._record_path("net", a, "eth0") != cni._record_path("net", b, "eth0")
    assert len(os.path.basename(cni._record_path("n" * 300, a, "eth0"))) < 255


def _mounted(path):
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == str(path) for line in f)


def test_the_netns_pin_is_never_made_or_unmounted_through_a_symlink(state_dir, stand_in_models, veth_factory,
                                                                   netns_factory, tmp_path):
    """A symlink planted at the pin's name (next to the hashed record) points at a mount point elsewhere: ADD
    neither unmounts that mount (UMOUNT_NOFOLLOW) nor mounts over it (the pin is created O_EXCL|O_NOFOLLOW in
    its place); a record whose "pin" names that mount point makes DEL unpin only its own pin."""
    from dpdkeni.nsexec import mount, umount

    nic, _ = veth_factory()  # an idle stand-in NIC (no address: not active)
    victim, source = tmp_path / "victim", tmp_path / "source"
    victim.write_text("victim")
    source.write_text("source")
    mount(str(source), str(victim), "none", 4096)  # MS_BIND: a mount point outside the state dir
    try:
        conf = {"cniVersion": "1.0.0", "name": "pinned", "type": "dpdkeni-cni", "device": nic,
                "addresses": ["198.18.97.6/30"]}
        record = cni._record_path("pinned", "c0ffee", "net1")
        pin = record[:-len(".json")] + ".netns"
        statedir.subdir("cni")
        os.symlink(str(victim), pin)
        ns = netns_factory()
        add = run_cni("ADD", conf, netns=f"/run/netns/{ns}")
        assert add.returncode == 0, add
        assert _mounted(victim) and victim.read_text() == "source", "the planted symlink was followed"
        assert not os.path.islink(pin) and _mounted(pin)
        assert os.stat(pin).st_ino == os.stat(f"/run/netns/{ns}").st_ino
        doc = cni.load_record(record)
        assert doc["pin"] == pin
        with open(record, "w", encoding="utf-8") as f:
            json.dump({**doc, "pin": str(victim)}, f)
        deleted = run_cni("DEL", conf, netns=f"/run/netns/{ns}")
        assert deleted.returncode == 0, deleted
        assert _mounted(victim), "DEL unmounted the path the record named"
        assert not _mounted(pin) and os.listdir(os.path.dirname(record)) == []
    finally:
        umount(str(victim), 2)


def test_the_sweeper_reads_records_only_in_a_checked_state_dir(tmp_path, monkeypatch):
    """cni serve's sweeper lists and releases records: a records dir that is a symlink (or group-writable) is
    refused (StateDirError, logged by the server) before anything in it is read."""
    from dpdkeni import cni_sweep

    state, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    state.mkdir(mode=0o700)
    elsewhere.mkdir(mode=0o700)
    monkeypatch.setenv("DPDKENI_STATE_DIR", str(state))
    os.symlink(str(elsewhere), str(state / "cni"))
    read = []
    monkeypatch.setattr(cni, "load_record", lambda path: read.append(path))
    (elsewhere / "x.json").write_text("{}")
    with pytest.raises(statedir.StateDirError, match="is a symlink"):
        cni_sweep.sweep(set())
    os.unlink(state / "cni")
    (state / "cni").mkdir(mode=0o700)
    (state / "cni" / "x.json").write_text("{}")
    os.chmod(state / "cni", 0o770)
    with pytest.raises(statedir.StateDirError, match="writable by group or others"):
        cni_sweep.sweep(set())
    assert read == []
    os.chmod(state / "cni", 0o700)
    assert cni_sweep.sweep(set()) == [] and read == [str(state / "cni" / "x.json")]


# --- the CNI server ---------------------------------------------------------------------------------------------


@pytest.fixture
def cni_server(state_dir):
    sock = os.path.join(state_dir, "cni.sock")
    proc = subprocess.Popen([sys.executable, "-m", "dpdkeni", "cni", "serve", "--socket", sock],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "cni server listening" in proc.stderr.readline()
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _version_call(sock):
    return run_cni("VERSION", {"cniVersion": "1.0.0"}, extra_env={"DPDKENI_CNI_SOCKET": sock})


def test_a_100_mb_line_is_refused_and_the_server_serves_the_next_call(cni_server):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(cni_server)
    chunk = b"x" * (1 << 20)
    sent = 0
    try:
        for _ in range(100):
            s.sendall(chunk)
            sent += len(chunk)
        s.sendall(b"\n")
    except OSError:
        pass                                        # the server stopped reading and closed: refused
    reply = b""
    try:
        reply = s.recv(65536)
    except OSError:
        pass
    s.close()
    assert sent < 100 << 20, "the server read the whole 100 MB line"
    if reply:
        doc = json.loads(json.loads(reply)["stdout"])
        assert doc["code"] == 6 and "longer than 1048576 bytes" in doc["msg"]
    run = _version_call(cni_server)
    assert run.returncode == 0 and run.doc["supportedVersions"], run


def test_a_silent_caller_is_dropped_after_the_read_timeout(cni_server, monkeypatch):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(cni_server)
    t0 = time.monotonic()
    assert s.recv(100) == b""                       # closed by the server, never answered
    assert 5 < time.monotonic() - t0 < 25
    s.close()


def test_the_client_sends_nothing_to_a_server_that_is_not_root(nobody_dir):
    """A socket where dpdkeni-cni looks, served by an unprivileged process: the client checks SO_PEERCRED before
    sending the configuration, and reports error 5 instead."""
    sock, got = os.path.join(nobody_dir, "fake.sock"), os.path.join(nobody_dir, "got")
    code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX);s.bind(sys.argv[1]);s.listen(1);"
            "print('up',flush=True);c,_=s.accept();c.settimeout(5)\n"
            "try:\n data=c.recv(1<<20)\nexcept OSError:\n data=b'?'\nopen(sys.argv[2],'wb').write(data)")
    fake = subprocess.Popen([*NOBODY, sys.executable, "-c", code, sock, got], stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline().strip() == "up"
        run = run_cni("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "dpdkeni-cni", "device": "x",
                              "secret": "s3cr3t"}, netns="/proc/self/ns/net",
                      extra_env={"DPDKENI_CNI_SOCKET": sock})
        fake.wait(10)
    finally:
        fake.kill()
        fake.wait()
    assert run.returncode == 1 and run.doc["code"] == 5, run
    assert "is uid 65534, not root: not sending it the configuration" in run.doc["msg"]
    assert open(got, "rb").read() == b""


# --- one validator per value, at every door -------------------------------------------------------------------


def test_a_batch_is_checked_whole_before_anything_moves(cli, stand_in, veth_factory, container_factory, tmp_path):
    """The second item's gateway is bad: the first NIC must not have moved (the same validator as attach's)."""
    second, _ = veth_factory()
    c = container_factory()
    before = (nic_state(stand_in), nic_state(second))
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([{"nic": stand_in, "to": c.target, "addresses": ["198.18.98.2/24"]},
                                 {"nic": second, "to": c.target, "ifname": "eth1", "gateway": "198.18.98.0/24"}]))
    r = cli("attach", "--batch", str(batch))
    assert r.returncode == 2
    _one_error_line(r, "--batch item 2: bad gateway '198.18.98.0/24': not an IP address")
    assert (nic_state(stand_in), nic_state(second)) == before and Ledger().leases() == {}


@pytest.mark.parametrize("line,word", [
    ('target = "container:../../../../proc/1"', "bad container id '../../../../proc/1'"),
    ('target = "container:a b"', "bad container id 'a b'"),
    ('table = 254', "253-255 are the kernel's"),
    ('gateway = "224.0.0.1"', "multicast or unspecified"),
])
def test_policy_values_go_through_the_same_validators(tmp_path, line, word):
    from dpdkeni.policy import PolicyError, load

    path = tmp_path / "p.toml"
    key = line.split(" ")[0]
    text = '[[rule]]\nmatch = { model = "virtio-net" }\ntarget = "netns:blue"\n'
    text = text.replace('target = "netns:blue"\n', "") if key == "target" else text
    path.write_text(text + line + "\n")
    with pytest.raises(PolicyError) as err:
        load(str(path))
    assert str(err.value).startswith(f"{path}:") and word in str(err.value), str(err.value)


@pytest.mark.parametrize("which", ["symlink", "1777", "nobody"])
def test_the_udev_hook_queues_nothing_into_a_bad_state_dir(tmp_path, which):
    """The hook (stdlib only, run by udev as root) checks the state dir itself: through a symlink, into a
    world-writable or someone else's directory, it writes nothing."""
    from test_daemon import run_hook

    path, _ = _bad_state_dirs(tmp_path)[which]
    before = sorted(os.listdir(tmp_path / "real")) + sorted(os.listdir(path))
    out = run_hook(path)
    why = "Not a directory" if which == "symlink" else "is not a private directory"  # O_NOFOLLOW|O_DIRECTORY
    assert out.returncode == 1 and out.stderr.startswith("dpdkeni-hook: error: cannot queue the event") \
        and why in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(os.listdir(tmp_path / "real")) + sorted(os.listdir(path)) == before


def test_the_udev_hook_still_queues_into_a_good_state_dir(state_dir):
    from test_daemon import run_hook
    from dpdkeni import udev

    os.chmod(state_dir, 0o700)
    out = run_hook(state_dir)
    assert out.returncode == 0, out.stderr
    (event,) = udev.read_queue(state_dir)
    assert event["ACTION"] == "add"
    assert oct(os.stat(udev.queue_dir(state_dir)).st_mode & 0o777) == "0o700"


def test_cni_add_with_a_bad_ifname_is_error_4_before_ipam(stand_in, netns_factory, tmp_path):
    """host-local would hand out an address first; a bad CNI_IFNAME must stop ADD before that."""
    data = tmp_path / "ipam"
    conf = {"cniVersion": "1.0.0", "name": "hostile", "type": "dpdkeni-cni", "device": stand_in,
            "ipam": {"type": "host-local", "subnet": "198.18.96.0/24", "dataDir": str(data)}}
    before = nic_state(stand_in)
    run = run_cni("ADD", conf, netns=f"/run/netns/{netns_factory()}", ifname="a/b")
    assert run.returncode == 1 and run.doc["code"] == 4, run
    assert run.doc["msg"] == "CNI_IFNAME: bad interface name 'a/b': 1-15 characters, no spaces, '/' or ':'"
    assert nic_state(stand_in) == before and not data.exists()
