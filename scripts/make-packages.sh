#!/usr/bin/env bash
# Builds fer-sensor's Debian packages for the Raspberry Pi: arm64 (64-bit Raspberry Pi OS, Debian)
# and armhf (32-bit), with cargo-deb from the `device` profile (fat LTO, one codegen unit).
#
#   scripts/make-packages.sh                  # both, into target/debian/
#   scripts/make-packages.sh --arch arm64     # one
#   scripts/make-packages.sh --profile release --out DIR
#   scripts/make-packages.sh --tools          # only install cargo-deb, then stop
#
# Needs what the cross builds need (README, "Golden tests on the host and on ARM": Debian's cross
# linkers, the rustup targets) and cargo-deb, which it installs at the pinned version if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.7.0
profile=device
out=""
arches=()
tools_only=0
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arches+=("${2:?--arch needs arm64 or armhf}"); shift 2 ;;
    --profile) profile="${2:?--profile needs a cargo profile}"; shift 2 ;;
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    --tools) tools_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "make-packages: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#arches[@]} -gt 0 ] || arches=(arm64 armhf)

if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  echo "make-packages: installing cargo-deb $CARGO_DEB_VERSION" >&2
  cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION" --quiet
fi
[ $tools_only -eq 0 ] || exit 0

target_dir="${CARGO_TARGET_DIR:-target}"
out="${out:-$target_dir/debian}"
mkdir -p "$out"
for arch in "${arches[@]}"; do
  case "$arch" in
    arm64) triple=aarch64-unknown-linux-gnu ;;
    armhf) triple=armv7-unknown-linux-gnueabihf ;;
    *) echo "make-packages: unknown architecture '$arch' (arm64 or armhf)" >&2; exit 2 ;;
  esac
  # cargo-deb strips with Debian's cross binutils (aarch64-linux-gnu-strip, ...), which come with
  # the cross linkers.
  cargo deb -p fer-firmware --target "$triple" --profile "$profile" --output "$out"
done
ls -l "$out"/fer-sensor_*.deb
