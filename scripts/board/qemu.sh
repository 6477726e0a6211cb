# shellcheck shell=bash
# The emulated board, one definition for the two scripts that boot it (sourced, not run):
# `board_qemu SECONDS KERNEL INITRD CMDLINE [QEMU ARGS…]` boots KERNEL with INITRD on a Cortex-A72
# `virt` machine, 2 cores and 2 GiB like a Raspberry Pi 4, with no display, a random-number device
# (the guest's systemd and apt wait for entropy without one) and ttyAMA0 on standard output, and
# stops it after SECONDS.
board_qemu() {
  local seconds=$1 kernel=$2 initrd=$3 cmdline=$4
  shift 4
  timeout "$seconds" qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 2048 -nographic -no-reboot \
    -kernel "$kernel" -initrd "$initrd" -append "$cmdline" -device virtio-rng-device "$@"
}
