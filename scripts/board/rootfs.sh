#!/usr/bin/env bash
# Assembles the emulated board's system from Debian arm64 packages, or reuses the one cached under
# the same key, and prints the folder that holds it: `vmlinuz` (Debian's own arm64 kernel) and
# `rootfs.cpio` (a configured Debian root file system, booted as the initramfs so that no disk
# driver is needed).
#
# The host never runs arm64 code: `debootstrap --foreign` downloads, checks and unpacks; the
# packages' maintainer scripts run inside the emulated board (second-stage.sh as its PID 1), which
# writes the configured tree back as a tar stream onto a raw disk.
#
# Cache: ${FER_BOARD_CACHE:-~/.cache/fer-sensor-board}/KEY, KEY from the package list, the suite,
# the kernel modules and these scripts. Needs root (debootstrap), debootstrap, cpio,
# qemu-system-aarch64 and Debian's archive.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/board/qemu.sh
. "$here/qemu.sh"

suite=bookworm
mirror=http://deb.debian.org/debian
# Besides minbase: an init, udev for the camera's device node, kmod for its driver, the broker
# the sensor publishes to and its client for the test, procps for pgrep.
packages=systemd-sysv,udev,kmod,mosquitto,mosquitto-clients,procps
kernel_package=linux-image-arm64
# The modules the board needs: vivid (a V4L2 camera in the kernel) and what it depends on, the
# virtio disk that carries the assembled tree out and the virtio console the readings leave by.
modules=(
  kernel/drivers/media/test-drivers/vivid/vivid.ko
  kernel/drivers/media/cec/core/cec.ko
  kernel/drivers/media/mc/mc.ko
  kernel/drivers/media/rc/rc-core.ko
  kernel/drivers/media/v4l2-core/v4l2-dv-timings.ko
  kernel/drivers/media/v4l2-core/videodev.ko
  kernel/drivers/media/common/v4l2-tpg/v4l2-tpg.ko
  kernel/drivers/media/common/videobuf2/videobuf2-common.ko
  kernel/drivers/media/common/videobuf2/videobuf2-dma-contig.ko
  kernel/drivers/media/common/videobuf2/videobuf2-memops.ko
  kernel/drivers/media/common/videobuf2/videobuf2-v4l2.ko
  kernel/drivers/media/common/videobuf2/videobuf2-vmalloc.ko
  kernel/drivers/virtio/virtio_mmio.ko
  kernel/drivers/block/virtio_blk.ko
  kernel/drivers/char/virtio_console.ko
  kernel/drivers/char/hw_random/virtio-rng.ko
)

key=$(cat "$0" "$here/second-stage.sh" "$here/qemu.sh" | sha256sum | cut -c1-16)
cache="${FER_BOARD_CACHE:-$HOME/.cache/fer-sensor-board}"
dir="$cache/$key"
if [ -f "$dir/rootfs.cpio" ] && [ -f "$dir/vmlinuz" ]; then
  echo "board: cached system $dir" >&2
  echo "$dir"
  exit 0
fi
say() { echo "board: $* ($(date -u +%H:%M:%S))" >&2; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/assembling.XXXXXX")
trap 'rm -rf "$work"' EXIT

say "downloading and unpacking Debian $suite arm64 ($packages)"
debootstrap --foreign --arch=arm64 --variant=minbase --include="$packages" \
  "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -20 "$work/debootstrap.log" >&2; exit 1; }
# Where the host could not mount /proc into the tree, debootstrap leaves a link to the host's.
[ -L "$work/root/proc" ] && rm "$work/root/proc" && mkdir "$work/root/proc"

say "fetching Debian's arm64 kernel ($kernel_package)"
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
echo "deb [arch=arm64] $mirror $suite main" >"$apt_dir/sources.list"
# A private apt state: the host's own configuration and architectures stay untouched.
apt_options=(-o APT::Architecture=arm64 -o APT::Architectures=arm64
  -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir"
  -o Dir::Cache::Archives="$apt_dir/archives" -o Dir::Etc::SourceList="$apt_dir/sources.list"
  -o Dir::Etc::SourceParts=- -o Dir::State::status=/dev/null -o Debug::NoLocking=1
  -o APT::Sandbox::User=root)
apt-get "${apt_options[@]}" -qq update
kernel_abi=$(apt-cache "${apt_options[@]}" depends "$kernel_package" | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1)
[ -n "$kernel_abi" ] || { echo "board: no kernel behind $kernel_package" >&2; exit 1; }
(cd "$apt_dir/archives" && apt-get "${apt_options[@]}" -qq download "$kernel_abi")
dpkg-deb -x "$apt_dir"/archives/"$kernel_abi"_*.deb "$work/kernel"
release=${kernel_abi#linux-image-}
cp "$work/kernel/boot/vmlinuz-$release" "$work/vmlinuz"
from="$work/kernel/lib/modules/$release"
to="$work/root/usr/lib/modules/$release"
mkdir -p "$to"
cp "$from"/modules.order "$from"/modules.builtin "$from"/modules.builtin.modinfo "$to/"
for module in "${modules[@]}"; do
  install -D -m 644 "$from/$module" "$to/$module"
done
echo "$release" >"$work/root/etc/fer-board-kernel"
install -m 755 "$here/second-stage.sh" "$work/root/second-stage"

say "configuring the packages inside the emulated board (their maintainer scripts are arm64)"
(cd "$work/root" && find . | cpio -o -H newc --quiet) >"$work/stage.cpio"
truncate -s 2G "$work/tree.tar"
board_qemu 3600 "$work/vmlinuz" "$work/stage.cpio" "console=ttyAMA0 rdinit=/second-stage panic=-1 quiet" \
  -drive file="$work/tree.tar",if=none,format=raw,id=tree -device virtio-blk-device,drive=tree \
  </dev/null >"$work/second-stage.log" 2>&1 || true
grep -q "SECOND-STAGE OK" "$work/second-stage.log" ||
  { tail -30 "$work/second-stage.log" >&2; echo "board: the second stage failed" >&2; exit 1; }

say "packing the configured system"
rm -rf "$work/root"
mkdir "$work/root"
tar -C "$work/root" --numeric-owner -xpf "$work/tree.tar"
rm "$work/tree.tar"
root="$work/root"
echo fer-board >"$root/etc/hostname"
# The camera's driver at boot; the readings leave by the virtio console, so no login prompt there.
echo vivid >"$root/etc/modules-load.d/vivid.conf"
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@hvc0.service"
(cd "$root" && find . | cpio -o -H newc --quiet) >"$work/rootfs.cpio"
rm -rf "$dir"
mkdir -p "$dir"
mv "$work/vmlinuz" "$work/rootfs.cpio" "$dir/"
say "cached the system in $dir"
echo "$dir"
