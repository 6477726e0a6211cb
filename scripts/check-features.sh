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
if [ $status -ne 0 ]; then
  echo "run 'cargo hakari generate' (and align Burn's features by hand: .config/hakari.toml)" >&2
else
  echo "every member builds its dependencies with the features cargo test --workspace uses"
fi
exit $status
