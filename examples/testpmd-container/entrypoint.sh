#!/bin/sh
# Find this container's DPDK NICs from the environment and run dpdk-testpmd on them.
#   DPDKENI_PCI       PCI addresses (comma or space separated), as dpdkeni's CDI spec sets it
#   PCIDEVICE_*       the same from an SR-IOV style device plugin (comma separated)
#   DPDKENI_WAIT      seconds to wait for the vfio/uio device nodes (a NIC handed over after start); 60
#   TESTPMD_EAL       EAL options; default "-l 0-1 -n 1 --in-memory"
#   TESTPMD_ARGS      testpmd options; default io forwarding, a first burst, stats every 5 s
# Extra arguments are appended to the testpmd options. SIGINT/SIGTERM stop testpmd, which prints its totals.
set -eu
pcis=$(printf '%s\n' "${DPDKENI_PCI:-}" | tr ', ' '\n\n')
if [ -z "$pcis" ]; then
  pcis=$(env | sed -n 's/^PCIDEVICE_[A-Za-z0-9_]*=//p' | tr ',' '\n')
fi
pcis=$(printf '%s\n' "$pcis" | sed '/^$/d')
if [ -z "$pcis" ]; then
  echo "testpmd-entrypoint: no NIC: set DPDKENI_PCI (dpdkeni CDI) or PCIDEVICE_* (device plugin)" >&2
  exit 2
fi
wait=${DPDKENI_WAIT:-60}
i=0
have_nodes() {
  for n in /dev/vfio/[0-9]* /dev/vfio/noiommu-[0-9]* /dev/uio[0-9]*; do [ -c "$n" ] && return 0; done
  return 1
}
until have_nodes; do
  i=$((i + 1))
  if [ "$i" -gt $((wait * 10)) ]; then
    echo "testpmd-entrypoint: no /dev/vfio/N or /dev/uioN after ${wait}s: was the NIC handed over?" >&2
    exit 1
  fi
  sleep 0.1
done
allow=""
for p in $pcis; do allow="$allow -a $p"; done
echo "testpmd-entrypoint: NICs $(echo $pcis)" >&2
# shellcheck disable=SC2086  # word splitting of the option strings is intended
exec dpdk-testpmd ${TESTPMD_EAL:--l 0-1 -n 1 --in-memory} $allow -- \
  ${TESTPMD_ARGS:---forward-mode=io --auto-start --tx-first --stats-period 5 --nb-cores=1 --total-num-mbufs=8192} "$@"
