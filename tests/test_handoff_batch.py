"""``dpdkeni attach --batch FILE`` and ``dpdkeni release NIC NIC...``: many NICs in one command (attach_many /
release_many), with --atomic for all or nothing; a bad batch file is refused before anything is touched."""
import json

import pytest

from conftest import needs_root
from test_handoff import host_state, prepare_nic

pytestmark = [needs_root]


@pytest.fixture
def env(state_dir, stand_in_models):
    return state_dir


def no_leases(cli):
    return json.loads(cli("leases", "--json").stdout) == []


def write(tmp_path, items):
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(items))
    return str(path)


def test_batch_attach_then_release_together(env, veth_factory, container_factory, cli, tmp_path):
    (a, _), (b, _) = veth_factory(), veth_factory()
    for nic in (a, b):
        prepare_nic(nic, mtu=1400)
    before = {nic: host_state(nic) for nic in (a, b)}
    c1, c2 = container_factory(), container_factory()
    batch = write(tmp_path, [
        {"nic": a, "to": c1.target, "addresses": ["198.18.21.2/24"], "gateway": "198.18.21.1"},
        {"nic": b, "to": c2.target, "ifname": "net1", "mtu": 1300, "addresses": "198.18.22.2/24"},
    ])
    r = cli("attach", "--batch", batch)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"attached if:{a} to {c1.target} as eth0", f"attached if:{b} to {c2.target} as net1"]
    assert "198.18.21.2/24" in c1.run("ip", "addr", "show", "eth0").stdout
    assert "default via 198.18.21.1" in c1.run("ip", "route").stdout
    shown = c2.run("ip", "addr", "show", "net1").stdout
    assert "198.18.22.2/24" in shown and "mtu 1300" in shown
    assert host_state(a) is None and host_state(b) is None
    r = cli("release", a, b, "--json")
    assert r.returncode == 0, r.stderr
    assert [d["params"]["outcome"] for d in json.loads(r.stdout)] == ["returned", "returned"]
    assert {nic: host_state(nic) for nic in (a, b)} == before
    assert no_leases(cli)


def test_batch_atomic_releases_what_was_attached_when_one_fails(env, veth_factory, container_factory, cli,
                                                                 tmp_path):
    (a, _), = [veth_factory()]
    prepare_nic(a, mtu=1400)
    before = host_state(a)
    c = container_factory()
    batch = write(tmp_path, [{"nic": a, "to": c.target}, {"nic": "dkno0such", "to": c.target, "ifname": "eth1"}])
    r = cli("attach", "--batch", batch, "--atomic", "--json")
    assert r.returncode == 2
    good, bad = json.loads(r.stdout)
    assert good["state"] == "attached" and good["released_again"] is True
    assert bad["nic"] == "dkno0such" and bad["exit_code"] == 2 and "dkno0such" in bad["error"]
    assert host_state(a) == before                   # all or nothing: the NIC that made it is back
    assert "eth0" not in c.run("ip", "link").stdout
    assert no_leases(cli)


def test_batch_without_atomic_keeps_what_worked(env, veth_factory, container_factory, cli, tmp_path):
    (a, _), = [veth_factory()]
    c = container_factory()
    r = cli("attach", "--batch", write(tmp_path, [{"nic": a, "to": c.target}, {"nic": "dkno0such", "to": c.target}]))
    assert r.returncode == 2
    assert r.stdout.splitlines() == [f"attached if:{a} to {c.target} as eth0"]
    assert "dkno0such" in r.stderr and "1 of 2 failed" in r.stderr and "Traceback" not in r.stderr
    assert "eth0" in c.run("ip", "link").stdout
    assert cli("release", a).returncode == 0


def test_bad_batch_files_are_refused_before_anything_changes(env, veth_factory, container_factory, cli, tmp_path):
    (a, _), = [veth_factory()]
    c = container_factory()
    cases = [
        ([{"nic": a, "to": c.target, "colour": "red"}], "unknown key 'colour'"),
        ([{"nic": a}], "'to' is required"),
        ([{"nic": a, "to": c.target}, {"nic": a, "to": c.target}], "asked for more than once"),
        ([], "non-empty JSON array"),
        (["eth0"], "expected an object"),
        ([{"nic": a, "to": c.target, "mtu": "1400"}], "'mtu' must be an integer"),
        ([{"nic": a, "to": c.target, "addresses": ["198.18.23.2/24", 7]}], "'addresses' must be a string or a list"),
        ([{"nic": a, "to": c.target, "dhcp": 1}], "'dhcp' must be true or false"),
    ]
    for items, text in cases:
        r = cli("attach", "--batch", write(tmp_path, items))
        assert r.returncode == 2 and text in r.stderr and len(r.stderr.strip().splitlines()) == 1, (items, r.stderr)
    (tmp_path / "bad.json").write_text("{not json")
    r = cli("attach", "--batch", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and "not JSON" in r.stderr
    r = cli("attach", "--batch", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "No such file" in r.stderr
    r = cli("attach", a, "--batch", write(tmp_path, [{"nic": a, "to": c.target}]))
    assert r.returncode == 2 and "give no NIC" in r.stderr
    r = cli("attach", a)
    assert r.returncode == 2 and "--to TARGET" in r.stderr
    assert host_state(a) is not None and no_leases(cli)


def test_attach_many_atomic_in_the_library(env, veth_factory, container_factory):
    """attach_many(atomic=True): one request fails, so the NIC attached is released again (its lease returned
    with params["released_again"]) and nothing stays leased; a malformed request is its InputError, in place."""
    from dpdkeni import handoff
    from dpdkeni.errors import InputError, NotFoundError
    from dpdkeni.ledger import Ledger
    from dpdkeni.request import AttachRequest
    (a, _), = [veth_factory()]
    prepare_nic(a, mtu=1400)
    before = host_state(a)
    c = container_factory()
    out = handoff.attach_many([AttachRequest(nic=a, target=c.target), {"nic": "dkno0such", "target": c.target},
                               {"nic": a, "target": c.target, "mtu": 7}], atomic=True)
    assert out[0].state == "attached" and out[0].params["released_again"] is True
    assert isinstance(out[1], NotFoundError) and isinstance(out[2], InputError) and "mtu 7" in str(out[2])
    assert host_state(a) == before and Ledger().leases() == {}
    out = handoff.attach_many([{"nic": a, "target": c.target}, {"nic": "dkno0such", "target": c.target}])
    assert out[0].state == "attached" and "released_again" not in out[0].params  # not atomic: it stays
    assert handoff.release(a).params["outcome"] == "returned" and host_state(a) == before
