#!/usr/bin/env bash
# Reruns the paper's comparison (issue 6): the cross-entropy baseline and CE + triplet-center loss
# with each negative strategy, each with and without the selective attention module, on one
# budget and the same seeds, then prints the table (`fer-train compare`).
#
#   scripts/compare.sh ferplus:../shared/data/ferplus                 # FER+, 6 epochs, seeds 42 43
#   scripts/compare.sh rafdb:/data/RAF-DB --epochs 30 --seeds "1 2 3"  # a RAF-DB copy (the paper's data)
#   scripts/compare.sh ferplus:../shared/data/ferplus --smoke          # the whole flow in about two minutes
#   scripts/compare.sh ferplus:../shared/data/ferplus --epochs 3 --limit 5000
#                                   # the budget of docs/results.md: about 5 min per run, 90 min in all
# Do not go below 3 epochs: the learning rate warms up over the whole first epoch, and one epoch
# of 6000 images left every configuration answering "surprise" (13-23 % accuracy).
#
# Runs go to runs/compare/<configuration>-seed<S>; a finished run is kept, an interrupted one is
# resumed, so the command can be rerun after a stop. The table is also written to
# runs/compare/comparison.md. For the first seed it also draws every configuration's valid
# accuracy per epoch (figures/curves.png) and each one's embedding of the valid split projected
# by PCA (figures/embedding-<run>.png), and writes how tight and separate the classes are
# (figures/separation.txt). Each FER+ run of 6 epochs takes about 53 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."

# The help is the comment block above.
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }
[ $# -ge 1 ] || usage 2
[ "$1" = "-h" ] || [ "$1" = "--help" ] && usage 0
data=$1; shift
epochs=6 seeds="42 43" out=runs/compare extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --epochs) epochs=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --limit) extra+=(--limit "$2"); shift 2 ;;
    --smoke) extra+=(--smoke); shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option $1" >&2; usage 2 ;;
  esac
done

cargo build -q -p fer-train
fer_train=${CARGO_TARGET_DIR:-target}/debug/fer-train
configs=(
  "ce:--loss ce"
  "tcl-fully:--loss tcl --negatives fully"
  "tcl-semi:--loss tcl --negatives semi"
  "tcl-prediction:--loss tcl --negatives prediction"
)
runs=()
for seed in $seeds; do
  for entry in "${configs[@]}"; do
    for attention in on off; do
      name=${entry%%:*}-attention-$attention-seed$seed
      run=$out/$name
      runs+=("$run")
      if [ -f "$run/report.json" ]; then
        echo "== $name: done, kept"
      elif [ -f "$run/config.json" ]; then
        echo "== $name: resuming"
        "$fer_train" train --resume "$run"
      else
        echo "== $name"
        # shellcheck disable=SC2086 # the configuration's flags are meant to split
        "$fer_train" train --data "$data" --out "$run" ${entry#*:} --attention "$attention" \
          --epochs "$epochs" --seed "$seed" "${extra[@]}"
      fi
    done
  done
done
"$fer_train" compare "${runs[@]}" | tee "$out/comparison.md"

first=${seeds%% *}
first_runs=()
for run in "${runs[@]}"; do [[ $run == *-seed$first ]] && first_runs+=("$run"); done
mkdir -p "$out/figures"
"$fer_train" curves "${first_runs[@]}" --out "$out/figures/curves.png"
: > "$out/figures/separation.txt"
for run in "${first_runs[@]}"; do
  name=$(basename "$run")
  line=$("$fer_train" embedding "$run" --out "$out/figures/embedding-$name.png" 2>/dev/null | grep 'faces:')
  echo "$name: $line" | tee -a "$out/figures/separation.txt"
done
