#!/usr/bin/env bash
# The full-system test: boots Debian's own arm64 kernel on an emulated board
# (qemu-system-aarch64 -M virt, Cortex-A72) with a Debian arm64 root file system, installs the
# fer-sensor package there with apt and checks the service under real systemd: vivid's camera read
# through V4L2, readings on the serial line (decoded here with fer_protocol's Decoder) and over
# MQTT, the watchdog, stop, upgrade, remove and purge (scripts/board/guest-test.sh).
#
#   scripts/board-test.sh                    # packages from the device profile, as released
#   scripts/board-test.sh --profile release  # a quicker build of the same package
#
# The board's system is assembled once and cached (scripts/board/rootfs.sh). Needs root, qemu-system-arm,
# debootstrap, cpio, Debian's archive and what scripts/make-packages.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/board/qemu.sh
. scripts/board/qemu.sh

profile=device
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:?--profile needs a cargo profile}"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "board-test: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
say() { echo "board-test: $* ($(date -u +%H:%M:%S))" >&2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say "building the arm64 package ($profile profile), and a rebuild of it for the upgrade"
scripts/make-packages.sh --arch arm64 --profile "$profile" --out "$work/debs" >&2
first=$(ls "$work"/debs/fer-sensor_*_arm64.deb)
version=$(dpkg-deb -f "$first" Version)
upstream=${version%-*}
mkdir -p "$work/overlay/fer-board"
cp "$first" "$work/overlay/fer-board/fer-sensor_${upstream}-1_arm64.deb"
cargo deb -p fer-firmware --target aarch64-unknown-linux-gnu --profile "$profile" --no-build \
  --deb-revision 2 --output "$work/overlay/fer-board/fer-sensor_${upstream}-2_arm64.deb" >&2

system=$(scripts/board/rootfs.sh)

# What this run adds to the cached system: the packages, the checks and the service that runs them.
overlay="$work/overlay"
install -m 755 scripts/board/guest-test.sh "$overlay/fer-board/"
install -m 644 scripts/board/board.toml scripts/board/board-dropin.conf "$overlay/fer-board/"
install -D -m 644 scripts/board/99-board-console.rules "$overlay/etc/udev/rules.d/99-board-console.rules"
install -D -m 644 /dev/stdin "$overlay/etc/systemd/system/fer-board-test.service" <<'EOF'
[Unit]
Description=fer-sensor package test
After=multi-user.target mosquitto.service

[Service]
Type=oneshot
ExecStart=/fer-board/guest-test.sh
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$overlay/etc/systemd/system/multi-user.target.wants"
ln -s ../fer-board-test.service "$overlay/etc/systemd/system/multi-user.target.wants/"
(cd "$overlay" && find . | cpio -o -H newc --quiet -R 0:0) >"$work/overlay.cpio"
cat "$system/rootfs.cpio" "$work/overlay.cpio" >"$work/initrd.cpio"

say "booting the emulated board"
start=$(date +%s)
board_qemu 1200 "$system/vmlinuz" "$work/initrd.cpio" \
  "console=ttyAMA0 rdinit=/sbin/init panic=-1 quiet systemd.show_status=error" \
  -device virtio-serial-device -chardev file,id=serial,path="$work/serial.bin" \
  -device virtconsole,chardev=serial </dev/null >"$work/console.log" 2>&1 || true
say "the board ran $(($(date +%s) - start)) s"
# What the checks printed, without the console's time and unit prefix.
sed -n 's/\r$//; s/^.*guest-test\.sh\[[0-9]*\]: \(BOARD\|status: \|mqtt: \|journal: \)/\1/p' \
  "$work/console.log" >"$work/checks.log"
grep -v "^journal: " "$work/checks.log" >&2 || true

failed=0
grep -q "^BOARD-TEST PASS" "$work/checks.log" || {
  failed=1
  if grep -q "^BOARD-TEST" "$work/checks.log"; then grep "^journal: " "$work/checks.log" >&2; else tail -40 "$work/console.log" >&2; fi
}
# The serial line: every frame the sensor wrote on the board's virtio console, decoded as a
# microcontroller would.
cargo run -q -p fer-protocol --example receive <"$work/serial.bin" >"$work/readings.txt" 2>&1 || true
frames=$(grep -c ' no_face ' "$work/readings.txt" || true)
bad=$(grep -c 'bad frame' "$work/readings.txt" || true)
say "serial line: $frames no_face frames decoded, $bad bad"
if [ "$frames" -lt 10 ] || [ "$bad" -gt 0 ]; then
  echo "board-test: FAIL serial: want 10 or more no_face frames and no bad one" >&2
  failed=1
fi
if [ $failed -ne 0 ]; then
  echo "board-test: FAILED" >&2
  exit 1
fi
say "passed"
