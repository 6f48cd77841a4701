#!/usr/bin/env bash
# Trains the zoo architectures on Fashion-MNIST with the commands recorded in
# results/baselines.json (resuming any interrupted run) and collects their test metrics.
# Usage: scripts/baselines.sh [arch ...]   (default: mlp lenet5 vgg resnet densenet)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p squeeze-cli
# arch → training options; the epoch counts fit 3-hour sessions on 2 cores
declare -A opts=(
  [mlp]="--out runs/mlp"
  [lenet5]="--epochs 15 --out runs/lenet5"
  [vgg]="--epochs 12 --out runs/vgg"
  [resnet]="--epochs 15 --out runs/resnet15"
  [densenet]="--epochs 15 --out runs/densenet15"
)
archs=("$@"); [ ${#archs[@]} -eq 0 ] && archs=(mlp lenet5 vgg resnet densenet)
collect=()
for a in "${archs[@]}"; do
  [ -n "${opts[$a]:-}" ] || { echo "baselines.sh: unknown arch $a (known: ${!opts[*]})" >&2; exit 2; }
  out="${opts[$a]##*--out }"
  collect+=("$a=$out")
  if [ -f "$out/metrics.json" ]; then echo "$a: done"; continue; fi
  resume=""; [ -f "$out/checkpoint/state.json" ] && resume="--resume"
  # shellcheck disable=SC2086
  ./target/release/squeeze train --arch "$a" ${opts[$a]} $resume
done
python3 scripts/collect_baselines.py "${collect[@]}"
