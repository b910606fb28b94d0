#!/bin/sh
# Run dpdkeni's udev hook as udev would for "a virtio-net NIC ens5 was added", without udev.
# With the daemon listening the event goes to its socket; with none it is queued (the daemon reads the queue
# when it starts) and the queued file is shown.
#   sh examples/udev/hook-demo.sh          (DPDKENI_STATE_DIR: where the queue goes, default a temporary dir)
set -eu
HOOK=${HOOK:-dpdkeni-hook}
STATE=${DPDKENI_STATE_DIR:-$(mktemp -d)}
env -i PATH="$PATH" DPDKENI_STATE_DIR="$STATE" DPDKENI_HOOK_VERBOSE=1 \
    ACTION=add SUBSYSTEM=net DEVPATH=/devices/pci0000:00/0000:00:05.0/virtio2/net/ens5 INTERFACE=ens5 IFINDEX=7 \
    SEQNUM=4242 ID_VENDOR_ID=0x1af4 ID_MODEL_ID=0x1041 ID_NET_NAME_PATH=enp0s5 \
    $HOOK
for f in "$STATE"/hook-queue/*.json; do
    if [ -e "$f" ]; then echo "queued: $f"; cat "$f"; echo; fi
done
