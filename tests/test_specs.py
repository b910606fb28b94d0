import pytest

from dpdkeni import specs
from dpdkeni.errors import InputError


@pytest.mark.parametrize("text,expected", [
    ("0000:00:03.0", ("pci", "0000:00:03.0")),
    ("00:03.0", ("pci", "0000:00:03.0")),
    ("0000:AF:1f.7", ("pci", "0000:af:1f.7")),
    ("52:54:00:AB:cd:EF", ("mac", "52:54:00:ab:cd:ef")),
    ("52-54-00-ab-cd-ef", ("mac", "52:54:00:ab:cd:ef")),
    ("eth0", ("ifname", "eth0")),
    ("enp0s3", ("ifname", "enp0s3")),
])
def test_classify(text, expected):
    assert specs.classify(text) == expected


@pytest.mark.parametrize("bad,word", [
    ("0000:00:03", "MAC"),          # has ':' but no '.', so read as a MAC: malformed
    ("00:3.0", "PCI"),
    ("0000:00:20.0", "PCI"),        # slot > 0x1f
    ("0000:00:03.8", "PCI"),        # function > 7
    ("52:54:00:12:34", "MAC"),
    ("52:54:00:12:34:zz", "MAC"),
    ("a" * 16, "interface name"),
    ("eth 0", "interface name"),
    ("", "empty"),
])
def test_classify_rejects(bad, word):
    with pytest.raises(InputError) as exc:
        specs.classify(bad)
    assert word in str(exc.value)
    assert exc.value.exit_code == 2
