#!/usr/bin/env bash
# Runs the experiments of results/structured.json: each recipe through `squeeze compress`
# (the pruned model measured against its original in the same process, speeds interleaved
# over 5 rounds, 10 for the text encoder), then collects the reports into results/structured.json.
# Usage: scripts/structured-experiments.sh [KEY...] (default: all). Models go to
# runs/structured/KEY; a key whose report exists is collected, not re-run (FORCE=1 re-runs).
# vgg-slimming-int8 quantizes the committed zoo/vgg-slim (made by vgg-slimming, then copied
# there) and measures it against zoo/vgg with `squeeze report`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/squeeze}
MINILM=${MINILM:-models/all-MiniLM-L6-v2}
vgg=(vgg-slimming vgg-slimming-int8)
SLIM=${SLIM:-zoo/vgg-slim}
for c in l1 taylor bn; do vgg+=("vgg-$c-60" "vgg-$c-60-global"); done
text=()
for p in 10 20 30 40 50; do text+=("minilm-heads-ffn-$p" "minilm-heads-ffn-$p-global" "minilm-heads-ffn-$p-norm" "minilm-heads-ffn-$p-recovered"); done
mkdir -p runs/structured
keys=("$@")
[ ${#keys[@]} -gt 0 ] || keys=("${vgg[@]}" resnet-channel-50 densenet-channel-40 "${text[@]}")
for k in "${keys[@]}"; do
  case $k in
    vgg-*) model=zoo/vgg ;;
    resnet-*) model=zoo/resnet ;;
    densenet-*) model=zoo/densenet ;;
    minilm-*) model=$MINILM ;;
    *) echo "unknown key $k" >&2; exit 2 ;;
  esac
  if [ -f "runs/structured/$k/report.json" ] && [ -z "${FORCE:-}" ]; then
    echo "== $k (report present)"; continue
  fi
  echo "== $k"
  start=$(date +%s)
  if [ "$k" = vgg-slimming-int8 ]; then
    "$BIN" compress "$SLIM" --recipe recipes/vgg-int8-static.toml --out "runs/structured/$k" --force --rounds 5
    "$BIN" report zoo/vgg "runs/structured/$k" --rounds 5 --json "runs/structured/$k.against-original.json"
  else
    # text encoders: 10 rounds (their batch-1 ratio moves by ±0.01 between 5-round runs)
    rounds=5; [ "$model" = "$MINILM" ] && rounds=10
    "$BIN" compress "$model" --recipe "recipes/$k.toml" --out "runs/structured/$k" --force --rounds $rounds
  fi
  echo "$(( $(date +%s) - start ))" > "runs/structured/$k.seconds"
done
python3 scripts/structured_results.py "${keys[@]}"
