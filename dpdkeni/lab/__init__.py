"""The QEMU hot-plug lab: a Debian guest with real virtio-net / e1000 / e1000e hot-plug over QMP, vfio-pci
behind a vIOMMU, DPDK and runc, driven from the host (see :class:`dpdkeni.lab.lab.Lab`).

Modules, one job each: ``image`` (build and cache the guest), ``initramfs``, ``qemu`` (the process),
``qmp`` (the monitor client), ``agent`` (host side of the guest agent), ``guest_agent`` (runs in the guest),
``lab`` (``Lab``: boot, run, ``plug``/``unplug``).
"""
from __future__ import annotations

from .lab import Lab, PluggedNic

__all__ = ["Lab", "PluggedNic"]
