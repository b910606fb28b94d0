"""The host context: one state dir, sysfs root and models file per call, from the environment or set for the call
(the CNI server sets the client's), seen by every ledger, sysfs read and models lookup of the call, in the threads
it starts too."""
import threading

from conftest import needs_root
from dpdkeni import host, models
from dpdkeni.ledger import Ledger
from dpdkeni.sysfs import Sysfs


def test_from_env_and_its_defaults():
    assert host.Host.from_env({}) == host.Host("/run/dpdkeni", "/", "/etc/dpdkeni/models.toml")
    env = {"DPDKENI_STATE_DIR": "/s", "DPDKENI_SYSFS_ROOT": "/r", "DPDKENI_MODELS": "/m.json",
           "DPDKENI_OTHER": "x"}
    assert host.Host.from_env(env) == host.Host("/s", "/r", "/m.json")
    assert host.Host.from_env({"DPDKENI_STATE_DIR": ""}).state_dir == "/run/dpdkeni"  # empty: the default


def test_the_current_host_decides_for_the_ledger_sysfs_and_models_in_this_thread_and_carried_ones(
        tmp_path, monkeypatch):
    monkeypatch.setenv("DPDKENI_STATE_DIR", str(tmp_path / "env"))
    assert Ledger().directory == str(tmp_path / "env")  # no host set: the environment, read now
    mine = host.Host(str(tmp_path / "call"), str(tmp_path / "root"), str(tmp_path / "models.json"))
    (tmp_path / "models.json").write_text('{"model": [], "virtual_kinds": ["dummy"]}')
    seen = {}
    with host.using(mine):
        assert (Ledger().directory, Sysfs().root, models.virtual_kinds()) == (mine.state_dir, mine.sysfs_root,
                                                                               ["dummy"])
        plain = threading.Thread(target=lambda: seen.update(plain=Ledger().directory))
        carried = threading.Thread(target=host.carried(lambda: seen.update(carried=Ledger().directory)))
        for t in (plain, carried):
            t.start()
            t.join()
    assert seen == {"plain": str(tmp_path / "env"), "carried": mine.state_dir}  # a new thread starts without one
    assert Ledger().directory == str(tmp_path / "env")


@needs_root
def test_attach_many_threads_use_the_callers_host(tmp_path, state_dir, stand_in_models, veth_factory,
                                                  container_factory):
    from dpdkeni import handoff
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    nics = [veth_factory()[0] for _ in range(3)]
    cs = [container_factory() for _ in nics]
    with host.using(host.Host(str(other), "/", stand_in_models)):
        out = handoff.attach_many([{"nic": n, "target": c.target} for n, c in zip(nics, cs)], workers=3)
        assert [x.state for x in out] == ["attached"] * 3
        assert sorted(Ledger(str(other)).leases()) == sorted(f"if:{n}" for n in nics)
        assert Ledger(state_dir).leases() == {}
        assert [x.params["outcome"] for x in handoff.release_many(nics, workers=3)] == ["returned"] * 3
    assert Ledger(str(other)).leases() == {}
