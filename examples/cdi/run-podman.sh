#!/bin/sh
# Run dpdk-testpmd in a container on a NIC bound to vfio-pci, the devices given through CDI.
#
#   sudo examples/cdi/run-podman.sh 0000:00:04.0 [IMAGE]
#
# 1. binds the NIC to vfio-pci unless it is there already (dpdkeni bind: guards first, rollback on failure),
# 2. writes the CDI spec for every vfio NIC (dpdkeni cdi generate: /dev/vfio nodes, a capped hugetlbfs mount,
#    DPDKENI_* and PCIDEVICE_* env),
# 3. runs the container with --device dpdkeni.io/nic=<PCI address> (podman >= 4.1 resolves CDI names).
# containerd: see containerd.toml here, then `ctr run --cdi-device dpdkeni.io/nic=<PCI address> ...` (1.7+).
# DPDKENI, PODMAN, CDI_DIR (default /etc/cdi, where podman looks) and CDI_VERSION (default 0.5.0: Debian 12's
# podman 4.3 resolves no newer spec; later podmans read it too) override the defaults.
set -eu
NIC=${1:?usage: run-podman.sh NIC [IMAGE]}
IMAGE=${2:-localhost/dpdkeni-testpmd:latest}
DPDKENI=${DPDKENI:-dpdkeni}
PODMAN=${PODMAN:-podman}
CDI_DIR=${CDI_DIR:-/etc/cdi}
CDI_VERSION=${CDI_VERSION:-0.5.0}

json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]] or "")' "$1"; }

PCI=$($DPDKENI show "$NIC" --json | json_field pci)
[ -n "$PCI" ] || { echo "run-podman.sh: $NIC is not a PCI NIC" >&2; exit 2; }
if [ "$($DPDKENI show "$NIC" --json | json_field driver)" != "vfio-pci" ]; then
    $DPDKENI bind "$PCI" --driver vfio-pci
fi
$DPDKENI cdi generate --hugepages 256M --cdi-version "$CDI_VERSION" --output "$CDI_DIR/dpdkeni.json" >&2
exec $PODMAN run --rm --device "dpdkeni.io/nic=$PCI" --cap-add IPC_LOCK \
    "$IMAGE" -l 0-1 --in-memory -a "$PCI" -- --forward-mode=macswap --stats-period 5 --auto-start
