#!/usr/bin/env bash
# Runs the experiments of results/prune.json: each recipe through `squeeze compress` (the
# compressed model measured against its original in the same process), then collects
# every report into results/prune.json. Usage: scripts/prune-experiments.sh [KEY...]
# (default: all). Models go to runs/prune/KEY.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/squeeze}
STSB_TRAIN=${STSB_TRAIN:-data/stsb/sts-train.csv}
MINILM=${MINILM:-models/all-MiniLM-L6-v2}
mlp=(mlp-agp-90 mlp-magnitude-80 mlp-magnitude-90 mlp-magnitude-95 mlp-obd-80 mlp-obd-90
  mlp-obd-95 mlp-magnitude-80-oneshot mlp-magnitude-90-oneshot mlp-magnitude-95-oneshot
  mlp-obd-80-oneshot mlp-obd-90-oneshot mlp-obd-95-oneshot mlp-obd-hutchinson-90
  mlp-obd-hutchinson-90-oneshot mlp-obd-loop-95 mlp-deep-compression)
text=(minilm-magnitude-50 minilm-wanda-50 minilm-sparsegpt-50 minilm-magnitude-2of4
  minilm-wanda-2of4 minilm-sparsegpt-2of4)
keys=("$@")
[ ${#keys[@]} -gt 0 ] || keys=("${mlp[@]}" lenet5-deep-compression "${text[@]}")
for k in "${keys[@]}"; do
  case $k in
    mlp-*) model=zoo/mlp ;;
    lenet5-*) model=zoo/lenet5 ;;
    minilm-*) model=$MINILM ;;
    *) echo "unknown key $k" >&2; exit 2 ;;
  esac
  echo "== $k"
  "$BIN" compress "$model" --recipe "recipes/$k.toml" --out "runs/prune/$k" --force --rounds 5
done
python3 scripts/prune_results.py "${keys[@]}"
