#!/bin/sh
# Find this container's DPDK NICs from the environment and run dpdk-testpmd on them.
#   DPDKENI_PCI       PCI addresses (comma or space separated), given by hand (build-bundle.sh --env), or
#                     "auto": the NICs whose vfio/uio nodes dpdkeni puts in this container (its daemon hands
#                     over a hot-plugged NIC whose address nobody knew in advance); DPDKENI_NICS of them (1)
#   DPDKENI_NIC_*     one NIC each, as dpdkeni's CDI devices set them (several NICs in one container)
#   PCIDEVICE_*       the same from an SR-IOV style device plugin (comma separated)
#   DPDKENI_WAIT      seconds to wait until every NIC is bound and its vfio/uio node is here (NICs handed
#                     over after start); 60
#   TESTPMD_EAL       EAL options; default "-l 0-1 -n 1 --in-memory"
#   TESTPMD_ARGS      testpmd options; default io forwarding, a first burst, stats every 5 s
#   DPDKENI_SYSFS_ROOT  where /sys and /dev are (tests); default /
# Extra arguments are appended to the testpmd options. SIGINT/SIGTERM stop testpmd, which prints its totals.
set -eu
root=${DPDKENI_SYSFS_ROOT:-}
pci_re='^[0-9a-fA-F]\{4\}:[0-9a-fA-F]\{2\}:[0-9a-fA-F]\{2\}\.[0-7]$'
# only values that are PCI addresses count (PCIDEVICE_*_INFO holds JSON); each NIC once, in order
pick() {
  seen=""
  for p in $(tr ', ' '\n\n' | grep -e "$pci_re" || true); do
    case " $seen " in *" $p "*) ;; *) seen="$seen $p" ;; esac
  done
  echo $seen
}
# the NICs behind the device nodes this container has: /dev/vfio/N -> IOMMU group N's devices, /dev/uioN
from_nodes() {
  for n in "$root"/dev/vfio/[0-9]* "$root"/dev/vfio/noiommu-[0-9]*; do
    [ -c "$n" ] || continue
    g=${n##*/}; g=${g#noiommu-}
    ls "$root/sys/kernel/iommu_groups/$g/devices" 2>/dev/null
  done
  for n in "$root"/dev/uio[0-9]*; do
    [ -c "$n" ] && basename "$(readlink "$root/sys/class/uio/${n##*/}/device")"
  done
}
wait=${DPDKENI_WAIT:-60}
i=0
tick() {
  i=$((i + 1))
  [ "$i" -le $((wait * 10)) ] || { echo "testpmd-entrypoint: $1 after ${wait}s: was it handed over?" >&2; exit 1; }
  sleep 0.1
}
if [ "${DPDKENI_PCI:-}" = auto ]; then
  until [ "$(from_nodes | pick | wc -w)" -ge "${DPDKENI_NICS:-1}" ]; do tick "no ${DPDKENI_NICS:-1} NIC(s) handed over"; done
  DPDKENI_PCI=$(from_nodes | pick)
fi
pcis=$(printf '%s\n' "${DPDKENI_PCI:-}" | pick)
[ -n "$pcis" ] || pcis=$(env | sed -n 's/^DPDKENI_NIC_[A-Za-z0-9_]*=//p' | sort | pick)
[ -n "$pcis" ] || pcis=$(env | sed -n 's/^PCIDEVICE_[A-Za-z0-9_]*=//p' | pick)
if [ -z "$pcis" ]; then
  echo "testpmd-entrypoint: no NIC: set DPDKENI_PCI, DPDKENI_NIC_* (dpdkeni CDI) or PCIDEVICE_* (device plugin)" >&2
  exit 2
fi
# ready when every NIC is on a user-space driver and its device node is in this container (dpdkeni binds, then
# makes the nodes, one NIC after the other: starting on the first one's node would probe the others too early)
ready() {
  for p in $pcis; do
    dev=$root/sys/bus/pci/devices/$p
    drv=$(readlink "$dev/driver" 2>/dev/null) || return 1
    case "${drv##*/}" in
      vfio-pci)
        g=$(readlink "$dev/iommu_group" 2>/dev/null) || return 1
        g=${g##*/}
        [ -c "$root/dev/vfio/$g" ] || [ -c "$root/dev/vfio/noiommu-$g" ] || return 1 ;;
      uio_pci_generic|igb_uio)
        u=$(ls "$dev/uio" 2>/dev/null | head -n 1)
        [ -n "$u" ] && [ -c "$root/dev/$u" ] || return 1 ;;
      *) return 1 ;;
    esac
  done
}
until ready; do tick "$(echo $pcis) not all on vfio-pci/uio with their device nodes"; done
allow=""
for p in $pcis; do allow="$allow -a $p"; done
echo "testpmd-entrypoint: NICs $(echo $pcis)" >&2
# shellcheck disable=SC2086  # word splitting of the option strings is intended
exec dpdk-testpmd ${TESTPMD_EAL:--l 0-1 -n 1 --in-memory} $allow -- \
  ${TESTPMD_ARGS:---forward-mode=io --auto-start --tx-first --stats-period 5 --nb-cores=1 --total-num-mbufs=8192} "$@"
