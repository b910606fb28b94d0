"""The policy file: rules in TOML or JSON, errors with file and line."""
from __future__ import annotations

import json

import pytest

from dpdkeni.inventory import Nic
from dpdkeni.policy import PolicyError, load, parse

GOOD = """\
# two rules
[[rule]]
name = "web"
match = { model = "virtio-net", mac = "52-54-00-12-34-60" }
target = "container:web1"
ifname = "eth1"
addresses = ["198.18.0.2/24"]
gateway = "198.18.0.1"
mtu = 1500

[[rule]]
name = "fast"
match.pci = ["00:05.0", "0000:00:06.0"]
mode = "dpdk"
target_command = "/bin/echo pid:1"
hugepages = "256M"

[[rule]]
match = { ifname = "ens*" }
target = "netns:blue"
"""


def nic(**kw):
    base = dict(pci="0000:00:04.0", model="virtio-net", ifname="eth1", mac="52:54:00:12:34:60", driver="virtio-pci")
    return Nic(**{**base, **kw})


def test_good_policy_matches_first_rule():
    pol = parse(GOOD, "p.toml")
    assert [r.name for r in pol.rules] == ["web", "fast", "rule 3"]
    assert [r.line for r in pol.rules] == [2, 11, 18]
    assert pol.rule_for(nic()).name == "web"
    assert pol.rules[0].settings == {"ifname": "eth1", "addresses": ["198.18.0.2/24"], "gateway": "198.18.0.1",
                                     "mtu": 1500}
    assert pol.rule_for(nic(pci="0000:00:06.0", mac="52:54:00:00:00:01")).name == "fast"
    assert pol.rule_for(nic(pci="0000:00:07.0", mac="52:54:00:00:00:01", ifname="ens7")).name == "rule 3"
    assert pol.rule_for(nic(pci="0000:00:07.0", mac="52:54:00:00:00:01", ifname="eth9")) is None
    assert pol.rules[1].resolve_target(nic()) == "pid:1"


@pytest.mark.parametrize("edit,line,word", [
    (('mode = "dpdk"', 'mode = "turbo"'), 14, "mode 'turbo'"),
    (('mtu = 1500', 'mtu = 12'), 9, "mtu 12"),
    (('mtu = 1500', 'color = "red"'), 9, "unknown key 'color'"),
    (('gateway = "198.18.0.1"', 'gateway = "nope"'), 8, "gateway 'nope'"),
    (('match.pci = ["00:05.0", "0000:00:06.0"]', 'match.pci = ["zz"]'), 13, "malformed PCI address"),
    (('target = "netns:blue"', 'target = "blue"'), 20, "target 'blue'"),
    (('target = "netns:blue"', ''), 18, "exactly one of target"),
    (('addresses = ["198.18.0.2/24"]', 'addresses = ["198.18.0.2/24" "x"]'), 7, "line 7"),
    # what attach and the CNI config refuse, a policy refuses too: the daemon must not start on a rule it
    # cannot apply
    (('addresses = ["198.18.0.2/24"]', 'addresses = ["198.18.0.2"]'), 7, "bad address '198.18.0.2': no prefix"),
    (('hugepages = "256M"', 'hugepages = "256M"\ndriver = "e1000"'), 17, "bad driver 'e1000'"),
    (('mtu = 1500', 'table = "main"'), 9, "table 'main' is not an integer"),
    (('mtu = 1500', 'table = 254'), 9, "bad route table 254"),
])
def test_errors_name_file_and_line(tmp_path, edit, line, word):
    path = tmp_path / "policy.toml"
    path.write_text(GOOD.replace(*edit))
    with pytest.raises(PolicyError) as err:
        load(str(path))
    assert str(err.value).startswith(f"{path}:{line}:") and word in str(err.value), str(err.value)


def test_json_policy_and_its_errors(tmp_path):
    doc = {"rule": [{"match": {"model": "e1000"}, "target": "pid:1"},
                    {"match": {"model": "e1000e"}, "target": "pid:1", "mode": "bogus"}]}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc, indent=2))
    with pytest.raises(PolicyError, match=r"policy.json:1\d: rule 2: mode 'bogus'"):
        load(str(path))
    doc["rule"][1]["mode"] = "dpdk"
    path.write_text(json.dumps(doc, indent=2))
    assert [r.mode for r in load(str(path)).rules] == ["netdev", "dpdk"]
    path.write_text('{"rule": [\n{"match": }\n]}')
    with pytest.raises(PolicyError, match=r"policy.json:2: "):
        load(str(path))


def test_daemon_refuses_to_start_on_an_invalid_policy(cli, tmp_path, state_dir):
    path = tmp_path / "bad.toml"
    path.write_text('[[rule]]\nmatch = { model = "virtio-net" }\ntarget = "pid:1"\nmode = "fast"\n')
    out = cli("daemon", "--policy", str(path), timeout=30)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        f"dpdkeni: error: {path}:4: rule 1: mode 'fast' must be netdev or dpdk"]
    path.write_text('[[rule]]\nmatch = { model = "virtio-net" }\ntarget = "pid:1"\naddresses = ["198.18.0.2"]\n')
    out = cli("daemon", "--policy", str(path), timeout=30)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"dpdkeni: error: {path}:4: rule 1: bad address '198.18.0.2': no prefix length (use CIDR, like "
        "198.18.0.2/24)"]
    out = cli("daemon", "--policy", str(tmp_path / "missing.toml"))
    assert out.returncode == 2 and "cannot read the policy" in out.stderr
