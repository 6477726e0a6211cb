#!/bin/sh
# PID 1 of the emulated board's assembly boot (scripts/board/rootfs.sh): finishes what
# `debootstrap --foreign` unpacked on the host, where arm64 maintainer scripts cannot run, then
# writes the configured root filesystem as a tar stream onto the raw disk /dev/vda and powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
fail() {
    echo "SECOND-STAGE FAILED: $*"
    echo o >/proc/sysrq-trigger
    sleep 60
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "SECOND-STAGE: configuring packages ($(date -u +%H:%M:%S))"
/debootstrap/debootstrap --second-stage || fail "debootstrap --second-stage (its log: /debootstrap/debootstrap.log)"
# The board's kernel modules (the camera and the virtio devices) came from the host unindexed.
depmod -a "$(cat /etc/fer-board-kernel)" || fail depmod
apt-get clean
rm -rf /var/lib/apt/lists/* /var/log/*.log /var/cache/debconf/*-old
modprobe virtio_mmio && modprobe virtio_blk || fail "loading virtio_blk"
# A minute, not seconds: the assembly may run niced beside a build, and this clock runs on whether
# or not the guest gets the CPU.
for _ in $(seq 60); do [ -b /dev/vda ] && break; sleep 1; done
echo "SECOND-STAGE: writing the root filesystem ($(date -u +%H:%M:%S))"
# /proc, /sys and /dev are other file systems, left out by --one-file-system.
tar -C / --one-file-system --numeric-owner -cf /dev/vda --exclude=./second-stage . || fail "tar onto /dev/vda"
sync
echo "SECOND-STAGE OK"
echo o >/proc/sysrq-trigger
sleep 60
