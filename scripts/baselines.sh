#!/usr/bin/env bash
# Trains every zoo architecture on Fashion-MNIST with its defaults (resuming any
# interrupted run) and collects the test metrics into results/baselines.json.
# Usage: scripts/baselines.sh [arch ...]   (default: mlp lenet5 vgg resnet densenet)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p squeeze-cli
archs=("$@"); [ ${#archs[@]} -eq 0 ] && archs=(mlp lenet5 vgg resnet densenet)
for a in "${archs[@]}"; do
  out="runs/$a"
  if [ -f "$out/metrics.json" ]; then echo "$a: done"; continue; fi
  resume=""; [ -f "$out/checkpoint/state.json" ] && resume="--resume"
  ./target/release/squeeze train --arch "$a" --out "$out" $resume
done
python3 scripts/collect_baselines.py
