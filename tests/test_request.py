"""One attach request type, checked once: the same bad value is refused with the same words by the library, the
CLI (single and --batch), a policy file (with its file:line) and a CNI configuration, because all of them build an
AttachRequest. A request without its NIC and target (a policy rule, a CNI configuration) is completed with bind(),
which checks again."""
import json

import pytest

from dpdkeni import cli, cni, policy
from dpdkeni.errors import CniError, InputError, PolicyError
from dpdkeni.request import AttachRequest

POLICY = """[[rule]]
match = {{ model = "virtio-net" }}
target = "netns:blue"
{key} = {value}
"""

# (field, a bad value, the words every door says)
BAD = [
    ("ifname", "a/b", "bad interface name 'a/b': 1-15 characters, no spaces, '/' or ':'"),
    ("mtu", 12, "bad MTU: mtu 12 is not an integer from 68 to 65535"),
    ("gateway", "nope", "bad gateway 'nope': not an IP address"),
    ("hugepages", "lots", "malformed size 'lots'"),
    ("driver", "e1000", "bad driver 'e1000'"),
]


@pytest.mark.parametrize("field,value,words", BAD)
def test_every_door_refuses_a_bad_value_with_the_same_words(field, value, words, tmp_path, capsys):
    with pytest.raises(InputError) as info:
        AttachRequest(nic="eth1", target="netns:blue", **{field: value})
    assert info.value.message == words and info.value.exit_code == 2 and info.value.field == field
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.format(key=field, value=json.dumps(value)))
    with pytest.raises(PolicyError) as pinfo:
        policy.load(str(path))
    assert str(pinfo.value).startswith(f"{path}:4: rule 1: {words}")  # the line of the key
    with pytest.raises(CniError) as cinfo:
        cni.parse_netconf({"cniVersion": "1.0.0", "name": "n", "type": "dpdkeni-cni", "device": "eth1",
                           field: value})
    assert (cinfo.value.code, cinfo.value.msg) == (7, words)
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([{"nic": "eth1", "to": "netns:blue", field: value}]))
    flag = {"ifname": "--ifname", "mtu": "--mtu", "gateway": "--gateway", "hugepages": "--hugepages",
            "driver": None}[field]
    capsys.readouterr()
    assert cli.main(["attach", "--batch", str(batch)]) == 2
    assert capsys.readouterr().err.startswith(f"dpdkeni: error: --batch item 1: {words}")
    if flag:  # (argparse's own choices refuse a bad --driver first)
        assert cli.main(["attach", "eth1", "--to", "netns:blue", flag, str(value)]) == 2
        assert capsys.readouterr().err.startswith(f"dpdkeni: error: {words}")


def test_bind_fills_in_the_nic_and_target_and_checks_again():
    rule = AttachRequest(mode="dpdk", hugepages="2M")
    assert (rule.nic, rule.target) == (None, None)
    req = rule.bind(nic="0000:00:04.0", target="pid:1")
    assert (req.nic, req.target, req.mode, req.hugepages) == ("0000:00:04.0", "pid:1", "dpdk", "2M")
    with pytest.raises(InputError, match="bad target 'pid:x'") as info:
        rule.bind(nic="0000:00:04.0", target="pid:x")
    assert info.value.field == "target"
    kwargs = req.kwargs()
    assert "nic" not in kwargs and "target" not in kwargs and kwargs["mode"] == "dpdk"


def test_addresses_now_or_later():
    assert AttachRequest(addresses=["198.18.0.2/24"]).given == ("198.18.0.2/24",)
    with pytest.raises(InputError, match="no prefix length"):
        AttachRequest(addresses=["198.18.0.2"])
    later = AttachRequest(addresses=lambda: ["198.18.0.2/24"])  # the CNI plugin's IPAM result, after the move
    assert later.given == () and later.later() == ["198.18.0.2/24"]
    with pytest.raises(InputError, match="exclude each other"):
        AttachRequest(addresses=["198.18.0.2/24"], dhcp=True)
