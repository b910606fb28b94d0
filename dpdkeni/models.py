"""The NIC models dpdkeni manages: (vendor, device) -> model name, kernel driver, DPDK poll-mode driver.

Users extend the table with a TOML or JSON file (``DPDKENI_MODELS`` or ``/etc/dpdkeni/models.toml``)::

    [[model]]
    name = "ixgbevf"
    vendor = "8086"
    devices = ["10ed", "152e"]
    kernel_driver = "ixgbevf"
    pmd = "net_ixgbe_vf"

or in code with :func:`register_model`.
"""
from __future__ import annotations

import json
import logging
import os
import tomllib
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from .errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """One NIC model: the PCI ids it covers, the kernel driver that runs it, the DPDK PMD that can."""

    name: str
    vendor: str
    devices: Tuple[str, ...]
    kernel_driver: str
    pmd: str
    description: str = ""


VIRTIO_NET = Model("virtio-net", "1af4", ("1000", "1041"), "virtio-pci", "net_virtio",
                   "Virtio network device")
# The 8254x family the Linux e1000 driver runs and DPDK's em PMD accepts (QEMU's e1000 is 82540EM 100e).
E1000 = Model("e1000", "8086", (
    "1000", "1001", "1004", "1008", "1009", "100c", "100d", "100e", "100f", "1010", "1011", "1012",
    "1013", "1014", "1015", "1016", "1017", "1018", "1019", "101a", "101d", "101e", "1026", "1027",
    "1028", "1075", "1076", "1077", "1078", "1079", "107a", "107b", "107c", "108a", "1099", "10b5",
), "e1000", "net_e1000_em", "Intel 8254x Gigabit Ethernet")
# 82571..82574, 82583 and the PCH parts the Linux e1000e driver runs (QEMU's e1000e is 82574L 10d3).
E1000E = Model("e1000e", "8086", (
    "105e", "105f", "1060", "107d", "107e", "107f", "108b", "108c", "109a", "10a4", "10a5", "10b9",
    "10bc", "10d3", "10d5", "10d9", "10da", "10f6", "150c", "153a", "153b", "155a", "1559", "15a0",
    "15a1", "15a2", "15a3",
), "e1000e", "net_e1000_em", "Intel 8257x/82583 Gigabit Ethernet")

BUILTIN_MODELS: Tuple[Model, ...] = (VIRTIO_NET, E1000, E1000E)
DPDK_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio")
# the drivers dpdkeni binds a NIC to for DPDK, and the two ways a NIC is handed to a container
USER_DRIVERS = ("vfio-pci", "uio_pci_generic")
MODES = ("netdev", "dpdk")

_extra: List[Model] = []
_loaded_config: Optional[str] = None


def _norm_id(value: str) -> str:
    text = str(value).lower().removeprefix("0x")
    if len(text) != 4 or any(c not in "0123456789abcdef" for c in text):
        raise InputError(f"not a PCI id: {value!r} (four hex digits, like 1af4)")
    return text


def register_model(name: str, vendor: str, devices: Iterable[str], kernel_driver: str, pmd: str,
                   description: str = "") -> Model:
    """Add a model to the table for this process; it takes precedence over the built-in ones."""
    model = Model(name, _norm_id(vendor), tuple(_norm_id(d) for d in devices), kernel_driver, pmd,
                  description)
    _extra.insert(0, model)
    return model


def _config_path() -> str:
    from . import host
    return host.current().models


def load_models_file(path: str) -> List[Model]:
    """Parse a models file (TOML, or JSON by extension): a list of ``model`` tables."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InputError(f"cannot read models file {path}: {exc.strerror}") from exc
    try:
        if path.endswith(".json"):
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode())
    except ValueError as exc:  # tomllib.TOMLDecodeError included
        raise InputError(f"{path}: {exc}") from exc
    out = []
    for i, entry in enumerate(data.get("model", [])):
        try:
            out.append(Model(entry["name"], _norm_id(entry["vendor"]),
                             tuple(_norm_id(d) for d in entry["devices"]),
                             entry.get("kernel_driver", ""), entry.get("pmd", ""),
                             entry.get("description", "")))
        except KeyError as exc:
            raise InputError(f"{path}: model #{i + 1} lacks the key {exc.args[0]!r}") from exc
    return out


def virtual_kinds() -> List[str]:
    """Kinds of virtual link (``veth``, …) the models file admits as stand-in NICs (top-level key
    ``virtual_kinds``); empty unless a models file says so. Tests use it to hand veth ends over without
    ``force``, so the other guards (active NIC) still apply to them."""
    path = _config_path()
    if not os.path.exists(path):
        return []
    try:
        with open(path, "rb") as f:
            raw = f.read()
        data = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read models file {path}: {exc}") from exc
    return [str(k) for k in data.get("virtual_kinds", [])]


def all_models() -> List[Model]:
    """User-registered models, then those of the models file, then the built-in ones."""
    global _loaded_config
    path = _config_path()
    from_file: List[Model] = []
    if os.path.exists(path):
        from_file = load_models_file(path)
        if _loaded_config != path:
            log.debug("loaded %d models from %s", len(from_file), path)
            _loaded_config = path
    return [*_extra, *from_file, *BUILTIN_MODELS]


def _index() -> Dict[Tuple[str, str], Model]:
    index: Dict[Tuple[str, str], Model] = {}
    for model in reversed(all_models()):
        for dev in model.devices:
            index[(model.vendor, dev)] = model
    return index


def model_for(vendor: str, device: str) -> Optional[Model]:
    """The model for a PCI vendor/device pair (``0x1af4``/``1af4`` both accepted), or None."""
    try:
        key = (_norm_id(vendor), _norm_id(device))
    except InputError:
        return None
    return _index().get(key)


def model_by_name(name: str) -> Optional[Model]:
    """The model with this name (``virtio-net``, ``e1000``, ``e1000e``, …), or None."""
    return next((m for m in all_models() if m.name == name), None)
