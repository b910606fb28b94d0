"""The lab's initramfs: static busybox, the modules that reach the root disk and the 9p share, and an /init
that mounts both and hands over (switch_root) to the guest agent under tini as PID 1."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import List

from ..errors import Error

BUSYBOX = "/bin/busybox"
SHARE_TAG = "dpdkeni"
SHARE_MOUNT = "/opt/dpdkeni"

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "lab-init: loading boot modules"
for m in $(cat /modules.list); do insmod "/lib/modules/$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
mount -t ext4 -o rw /dev/vda /newroot || {{ echo "lab-init: cannot mount /dev/vda"; poweroff -f; }}
mkdir -p /newroot{SHARE_MOUNT}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 {SHARE_TAG} /newroot{SHARE_MOUNT} \\
  || echo "lab-init: no 9p share '{SHARE_TAG}'"
mount --move /dev /newroot/dev
umount /sys /proc
echo "lab-init: switch_root"
export PATH=/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH={SHARE_MOUNT} PYTHONDONTWRITEBYTECODE=1
exec switch_root /newroot /usr/bin/tini -g -- /usr/bin/python3 -m dpdkeni.lab.guest_agent --init
"""


def build(out: str, kdir: str, release: str, modules: List[str]) -> None:
    """Write a newc cpio archive ``out`` with busybox, ``modules`` (in load order) and /init."""
    if not os.path.exists(BUSYBOX):
        raise Error(f"lab image: {BUSYBOX} is missing", "apt-get install busybox-static")
    with tempfile.TemporaryDirectory() as tree:
        os.makedirs(os.path.join(tree, "bin"))
        shutil.copy2(BUSYBOX, os.path.join(tree, "bin", "busybox"))
        src = os.path.join(kdir, "lib", "modules", release)
        os.makedirs(os.path.join(tree, "lib", "modules"))
        names = [os.path.basename(rel) for rel in modules]
        for rel, name in zip(modules, names):
            shutil.copy2(os.path.join(src, rel), os.path.join(tree, "lib", "modules", name))
        with open(os.path.join(tree, "modules.list"), "w") as f:
            f.write("\n".join(names) + "\n")
        with open(os.path.join(tree, "init"), "w") as f:
            f.write(INIT_SCRIPT)
        os.chmod(os.path.join(tree, "init"), 0o755)
        listing = subprocess.run(["find", "."], cwd=tree, capture_output=True, check=True).stdout
        with open(out, "wb") as f:
            proc = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "--owner", "0:0"], cwd=tree,
                                  input=listing, stdout=f, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise Error(f"lab image: cpio failed: {proc.stderr.decode(errors='replace').strip()}")

