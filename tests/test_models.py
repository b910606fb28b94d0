import json

from dpdkeni import models


def test_builtin_ids():
    assert models.model_for("0x1af4", "0x1041").name == "virtio-net"
    assert models.model_for("1af4", "1000").name == "virtio-net"
    for dev in ("100e", "100f", "1004", "1026", "1075", "107c"):
        m = models.model_for("8086", dev)
        assert (m.name, m.kernel_driver, m.pmd) == ("e1000", "e1000", "net_e1000_em")
    m = models.model_for("8086", "10d3")
    assert (m.name, m.kernel_driver, m.pmd) == ("e1000e", "e1000e", "net_e1000_em")
    assert models.model_for("1af4", "1042") is None  # virtio-blk is not a NIC we manage
    assert models.model_for("zzzz", "1041") is None


def test_no_id_in_two_models():
    seen = {}
    for m in models.BUILTIN_MODELS:
        for d in m.devices:
            assert (m.vendor, d) not in seen, f"{d} in {m.name} and {seen[(m.vendor, d)]}"
            seen[(m.vendor, d)] = m.name


def test_models_file_extends_table(tmp_path, monkeypatch):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"model": [{"name": "ixgbevf", "vendor": "8086", "devices": ["10ed"],
                                           "kernel_driver": "ixgbevf", "pmd": "net_ixgbe_vf"}]}))
    monkeypatch.setenv("DPDKENI_MODELS", str(path))
    assert models.model_for("8086", "10ed").pmd == "net_ixgbe_vf"
    assert models.model_by_name("ixgbevf").kernel_driver == "ixgbevf"
    toml = tmp_path / "models.toml"
    toml.write_text('[[model]]\nname = "mlx"\nvendor = "15b3"\ndevices = ["1018"]\n')
    monkeypatch.setenv("DPDKENI_MODELS", str(toml))
    assert models.model_for("15b3", "1018").name == "mlx"
    assert models.model_for("8086", "10ed") is None


def test_bad_models_file_is_input_error(tmp_path, monkeypatch):
    import pytest
    from dpdkeni.errors import InputError
    path = tmp_path / "models.toml"
    path.write_text('[[model]]\nname = "x"\n')
    monkeypatch.setenv("DPDKENI_MODELS", str(path))
    with pytest.raises(InputError, match="lacks the key 'vendor'"):
        models.all_models()
