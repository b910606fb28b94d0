#!/bin/sh
# Build examples/testpmd-container as an OCI bundle (rootfs/ + config.json) for runc:
#   build-bundle.sh [--rootfs-from DIR] [--env K=V]... OUT
# Without --rootfs-from: a Debian bookworm root with DPDK by mmdebstrap (the Dockerfile's packages), the
# entrypoint copied in. With --rootfs-from DIR: config.json points at DIR (read-only; it must hold DPDK, as
# the lab's guest does) and the entrypoint is bind-mounted in. Then: runc run -d -b OUT NAME.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
from="" envs=$(mktemp)
trap 'rm -f "$envs"' EXIT
while [ $# -gt 1 ]; do
  case "$1" in
    --rootfs-from) from=$2; shift 2 ;;
    --env) printf '%s\n' "$2" >>"$envs"; shift 2 ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || { echo "usage: $0 [--rootfs-from DIR] [--env K=V]... OUT" >&2; exit 2; }
out=$1
mkdir -p "$out"
if [ -z "$from" ]; then
  mmdebstrap --variant=essential --include=dpdk-dev,librte-net-virtio23,librte-net-e1000-23,librte-mempool-ring23 \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    bookworm "$out/rootfs"
  install -m 755 "$here/entrypoint.sh" "$out/rootfs/usr/local/bin/testpmd-entrypoint"
  root=rootfs
else
  root=$from
fi
cd "$out"
rm -f config.json
runc spec
python3 - "$root" "$here/entrypoint.sh" "$([ -n "$from" ] && echo bind)" "$envs" <<'PY'
import json, sys
root, entry, bind = sys.argv[1], sys.argv[2], sys.argv[3]
with open(sys.argv[4]) as f:
    envs = [line.rstrip("\n") for line in f if "=" in line]
with open("config.json") as f:
    spec = json.load(f)
spec["root"] = {"path": root, "readonly": True}
proc = spec["process"]
proc["terminal"] = False
proc["args"] = ["/usr/local/bin/testpmd-entrypoint"]
proc["env"] += envs
# DPDK pins its hugepage memory for DMA through vfio: lift the memlock limit, keep CAP_IPC_LOCK
proc["rlimits"] = proc.get("rlimits", []) + [{"type": "RLIMIT_MEMLOCK", "hard": 2**63 - 1, "soft": 2**63 - 1}]
for kind in ("bounding", "effective", "permitted"):
    proc["capabilities"][kind] = sorted(set(proc["capabilities"][kind]) | {"CAP_IPC_LOCK"})
spec["mounts"] += [{"destination": d, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
                   for d in ("/run", "/tmp")]
if bind:
    spec["mounts"].append({"destination": "/usr/local/bin/testpmd-entrypoint", "type": "bind",
                           "source": entry, "options": ["rbind", "ro"]})
spec["hostname"] = "testpmd"
with open("config.json", "w") as f:
    json.dump(spec, f, indent=2)
PY
echo "$out"
