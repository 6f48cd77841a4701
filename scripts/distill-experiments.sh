#!/usr/bin/env bash
# Reproduces the student rows of results/distill.json (issue 12): a vgg student about 4×
# smaller than the committed zoo/vgg teacher (widths 16-16-M-32-32-M-60-60-M), trained with
# the same epochs and seeds (a) from scratch, (b) with Hinton soft targets, (c) with soft
# targets plus a FitNets hint on the second stage's output; then `squeeze bench distill`
# collects each run's test accuracy, measures student and teacher cost side by side, and
# writes results/distill.json. Finished runs are skipped and interrupted ones resumed from
# their per-epoch checkpoints, so the script can be rerun until it completes.
#   usage: bash scripts/distill-experiments.sh [train|bench|all]   (EPOCHS, SEEDS from env)
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
epochs="${EPOCHS:-2}"
seeds="${SEEDS:-0 1 2}"
sq=./target/release/squeeze
cargo build --release -q
student=(--widths 16,16,0,32,32,0,60,60,0 --epochs "$epochs")
hint=features.10.relu=features.10.relu
run() {  # out, then the squeeze command
  local out=$1; shift
  [[ -f $out/metrics.json ]] && return
  local again=(--force)
  [[ -f $out/checkpoint/state.json ]] && again=(--resume)
  echo "== $out" >&2
  "$sq" "$@" --out "$out" "${again[@]}" > "$out.log" 2>&1
}
if [[ $what == train || $what == all ]]; then
  mkdir -p runs/distill
  for s in $seeds; do
    run "runs/distill/scratch-s$s" train --arch vgg "${student[@]}" --seed "$s"
    run "runs/distill/kd-s$s" distill --teacher zoo/vgg --student vgg "${student[@]}" --seed "$s"
    run "runs/distill/kdh-s$s" distill --teacher zoo/vgg --student vgg "${student[@]}" \
      --seed "$s" --hint "$hint"
  done
fi
if [[ $what == bench || $what == all ]]; then
  dirs() { local d=(); for s in $seeds; do d+=("runs/distill/$1-s$s"); done; local IFS=,; echo "${d[*]}"; }
  "$sq" bench distill --teacher zoo/vgg \
    --variant "student-scratch=$(dirs scratch)" \
    --variant "student-kd=$(dirs kd)" \
    --variant "student-kd-hints=$(dirs kdh)"
fi
