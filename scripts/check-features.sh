#!/usr/bin/env bash
# Fails when `cargo run -p MEMBER` (or `cargo build -p MEMBER`) would build a dependency with other
# features than `cargo test --workspace` did, which means recompiling it and everything above it
# (tract, for fer-firmware: minutes). The workspace-hack crate prevents that; this catches a
# dependency change that needs `cargo hakari generate` (cargo install cargo-hakari) to follow it.
set -euo pipefail
cd "$(dirname "$0")/.."

# One line per package and feature set, as cargo tree resolves them for the given packages.
features() {
  cargo tree "$@" --format '{p} [{f}]' --prefix none 2>/dev/null | sed 's/ (\*)$//; s/ (proc-macro)$//' | sort -u
}

workspace=$(features --workspace -e normal,build,dev)
status=0
# fer-protocol is left out: built alone it is the no_std crate for microcontrollers, which must not
# take the workspace's std features (nobody runs it; its dependants build it with them).
for member in fer-runtime fer-firmware fer-train fer-export fer-golden; do
  extra=$(comm -13 <(echo "$workspace") <(features -p "$member" -e normal,build))
  if [ -n "$extra" ]; then
    echo "cargo run -p $member would rebuild these with other features than cargo test --workspace:"
    echo "$extra" | sed 's/^/  /'
    status=1
  fi
done

# The wgpu step of .ci/run: Burn and cubecl recompile with the GPU backend, and nothing else may
# (a crate below them built with other features recompiles everything above it, tract included).
gpu=$(features -p fer-train -p fer-export --features fer-train/wgpu,fer-export/wgpu -e normal,build,dev)
shared=$(comm -13 <(echo "$workspace") <(echo "$gpu") | cut -d" " -f1,2 | sort -u | grep -vE '^(burn|cubecl|fer-)' |
  while read -r name version; do
    if echo "$workspace" | grep -q "^$name $version "; then echo "$name $version"; fi
  done || true)
if [ -n "$shared" ]; then
  echo "the wgpu step would rebuild these with other features than cargo test --workspace:"
  echo "$shared" | sed 's/^/  /'
  status=1
fi
if [ $status -ne 0 ]; then
  echo "run 'cargo hakari generate' (and align Burn's features by hand: .config/hakari.toml)" >&2
else
  echo "every member, and the wgpu step below Burn, builds its dependencies with the features cargo test --workspace uses"
fi
exit $status
