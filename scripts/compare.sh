#!/usr/bin/env bash
# Reruns the paper's comparison: the cross-entropy baseline and CE + triplet-center
# loss with each negative strategy, each with and without the selective attention module, on one
# budget and the same seeds, then prints the table (`fer-train compare`).
#
#   scripts/compare.sh ferplus:../shared/data/ferplus             # FER+: 8 configurations x seeds 42 43 44, 5 epochs
#   scripts/compare.sh ferplus:../shared/data/ferplus --imbalance 100 --attention on
#                                   # the harsher setting: train long-tailed to a class ratio of 100
#                                   # (valid stays whole), the 4 attention-on configurations
#   scripts/compare.sh rafdb:/data/RAF-DB --epochs 30              # a RAF-DB copy (the paper's data)
#   scripts/compare.sh ferplus:../shared/data/ferplus --smoke      # the whole flow in a few minutes
#
# Options: --epochs N (5), --seeds "S ..." ("42 43 44"), --imbalance RATIO, --attention on|off|both
# (both), --limit N, --smoke, --backend flex|wgpu|cuda (flex; the others build fer-train with the
# feature of their name), --jobs N (runs trained at once, 1; see below), --out DIR
# (runs/compare, runs/compare-imbalance-RATIO or runs/compare-smoke), --records DIR
# (docs/runs/<DIR's name>; DIR/records with --smoke),
# --converged RUN|REPORT (a full-length run folder or an export report, e.g.
# models/fer.report.json, drawn on the curves as a dashed line at its final figures: how far the
# comparison's budget is from convergence).
# Do not go below 3 epochs: the learning rate warms up over the whole first epoch, and one epoch
# of 6000 images left every configuration answering "surprise" (13-23 % accuracy).
#
# Runs train in DIR/<configuration>-seed<S> (checkpoints, not committed); an interrupted one is
# resumed. A finished run is recorded (`fer-train record`) in RECORDS/<configuration>-seed<S>: its
# configuration, epochs, report and answers on valid face by face (predictions.json, for the
# paired statistics and the error AUROC), and for the first seed its embedding of the valid split
# projected by PCA (embedding.png) and how tight and separate the classes are (separation.txt).
# Records are small and committed: a recorded run is never trained again, so the comparison can
# span sittings that keep nothing but the repository. When every run is recorded, the table goes
# to RECORDS/comparison.md and every configuration's valid accuracy per epoch for the first seed
# to RECORDS/curves.png.
#
# --jobs 2 trains two runs at once, each logging to DIR/<run>.log. On the 2-core machine of
# 2026-11-30 one training kept its main thread busy and its workers mostly waiting (73 % of both
# cores, 74 images/s), and two at once trained 75-80 images/s each: twice the throughput. There,
# two at a time, a FER+ run took about 28 min and a long-tailed one (ratio 100: about 16,200
# faces) about 19 min (5 epochs, embedding and record included): the 24 FER+ runs and the 12
# long-tailed ones are about 7.5 hours with --jobs 2. (The machine of 2026-11-29 trained one run
# at 190 s per FER+ epoch, the median of runs/v2-e48-seed7's undisturbed epochs.)
set -euo pipefail
cd "$(dirname "$0")/.."

# The help is the comment block above.
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }
[ $# -ge 1 ] || usage 2
[ "$1" = "-h" ] || [ "$1" = "--help" ] && usage 0
data=$1; shift
epochs=5 seeds="42 43 44" out= records= jobs=1 extra=() attentions="on off" converged=() features=()
while [ $# -gt 0 ]; do
  case $1 in
    --epochs) epochs=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --records) records=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --imbalance) extra+=(--imbalance "$2"); out=${out:-runs/compare-imbalance-$2}; shift 2 ;;
    --backend) extra+=(--backend "$2"); [ "$2" = flex ] || features=(--features "$2"); shift 2 ;;
    --attention)
      case $2 in
        on|off) attentions=$2 ;;
        both) attentions="on off" ;;
        *) echo "--attention takes on, off or both" >&2; usage 2 ;;
      esac
      shift 2 ;;
    --limit) extra+=(--limit "$2"); shift 2 ;;
    --converged) converged=(--converged "$2"); shift 2 ;;
    --smoke) extra+=(--smoke); out=${out:-runs/compare-smoke}; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option $1" >&2; usage 2 ;;
  esac
done
case $jobs in
  ''|*[!0-9]*|0) echo "--jobs takes a positive whole number" >&2; usage 2 ;;
esac
out=${out:-runs/compare}
case " ${extra[*]} " in
  *" --smoke "*) records=${records:-$out/records} ;;
  *) records=${records:-docs/runs/$(basename "$out")} ;;
esac
first=${seeds%% *}

cargo build -q -p fer-train "${features[@]}"
fer_train=${CARGO_TARGET_DIR:-target}/debug/fer-train
configs=(
  "ce:--loss ce"
  "tcl-fully:--loss tcl --negatives fully"
  "tcl-semi:--loss tcl --negatives semi"
  "tcl-prediction:--loss tcl --negatives prediction"
)
# Trains (or resumes) one run, then records it: NAME SEED ATTENTION FLAGS. Each step returns on
# failure itself: called as `f || ...`, a function runs without `set -e`.
train_and_record() {
  local name=$1 seed=$2 attention=$3 flags=$4 line
  local run=$out/$name record=$records/$name
  if [ -f "$run/report.json" ]; then
    echo "== $name: done, recording"
  elif [ -f "$run/config.json" ]; then
    echo "== $name: resuming"
    "$fer_train" train --resume "$run" || return
  else
    echo "== $name"
    # shellcheck disable=SC2086 # the configuration's flags are meant to split
    "$fer_train" train --data "$data" --out "$run" $flags --attention "$attention" \
      --epochs "$epochs" --seed "$seed" "${extra[@]}" || return
  fi
  # The embedding needs the checkpoint, which the record leaves out: drawn now. Its progress
  # goes to stderr, its measurement to stdout; a failure is reported, not fatal.
  if [ "$seed" = "$first" ]; then
    mkdir -p "$record" || return
    if ! line=$("$fer_train" embedding "$run" --out "$record/embedding.png" | grep 'faces:'); then
      line="embedding failed (see the error above)"
    fi
    echo "$line" > "$record/separation.txt" || return
  fi
  # Last, so that a record with a report is a whole one.
  "$fer_train" record "$run" --to "$record"
}

runs=() pending=()
for seed in $seeds; do
  for entry in "${configs[@]}"; do
    for attention in $attentions; do
      name=${entry%%:*}-attention-$attention-seed$seed
      runs+=("$records/$name")
      # A kept run of another length would make the table mix budgets; `fer-train compare`
      # refuses that, but only after every other run has trained.
      for kept in "$records/$name" "$out/$name"; do
        if [ -f "$kept/config.json" ] && ! grep -q "\"epochs\": $epochs," "$kept/config.json"; then
          echo "$kept was trained for another number of epochs than $epochs: use another --out and --records" >&2
          exit 2
        fi
      done
      if [ -f "$records/$name/report.json" ]; then
        echo "== $name: recorded in $records/$name"
      else
        pending+=("$name:$seed:$attention:${entry#*:}")
      fi
    done
  done
done

# A failed or interrupted run stops the launching of more; the ones running finish.
mkdir -p "$out"
failed=0 running=0
for job in "${pending[@]}"; do
  IFS=: read -r name seed attention flags <<< "$job"
  if [ "$jobs" -le 1 ]; then
    train_and_record "$name" "$seed" "$attention" "$flags" || { failed=$?; break; }
    continue
  fi
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=$?
    running=$((running - 1))
    [ "$failed" -eq 0 ] || break
  fi
  echo "== $name: training (log: $out/$name.log)"
  train_and_record "$name" "$seed" "$attention" "$flags" > "$out/$name.log" 2>&1 &
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=$?
  running=$((running - 1))
done
if [ "$failed" -ne 0 ]; then
  echo "a run failed or was interrupted (exit $failed): rerun the same command to resume" >&2
  exit "$failed"
fi
"$fer_train" predictions "${runs[@]}"
"$fer_train" compare "${runs[@]}" | tee "$records/comparison.md"

first_runs=()
for run in "${runs[@]}"; do [[ $run == *-seed$first ]] && first_runs+=("$run"); done
"$fer_train" curves "${first_runs[@]}" --out "$records/curves.png" "${converged[@]}"
for run in "${first_runs[@]}"; do echo "$(basename "$run"): $(cat "$run/separation.txt")"; done
