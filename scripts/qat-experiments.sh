#!/usr/bin/env bash
# Quantization-aware training and binary/ternary weights on the real workloads: makes
# every model of results/quant.json's QAT keys with `squeeze compress`, then measures each
# against its original with `squeeze bench quant` (interleaved in one process) and adds
# what the run recorded (scripts/qat_results.py). Run the bench phase with
# no other job on the machine. Usage: bash scripts/qat-experiments.sh [make|bench] [KEY...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
SQ=./target/release/squeeze
phase=${1:-all}
shift || true
keys=("$@")
[ ${#keys[@]} -eq 0 ] && keys=(vgg-ptq-int4 vgg-qat-int4 vgg-qat-w2a4 vgg-binary vgg-ternary lenet5-qat-int4 mlp-qat-int4)
base() { echo "zoo/${1%%-*}"; }
for k in "${keys[@]}"; do
  make="squeeze compress $(base "$k") --recipe recipes/$k.toml --out runs/qat/$k"
  if [ "$phase" != bench ]; then
    $SQ compress "$(base "$k")" --recipe "recipes/$k.toml" --out "runs/qat/$k" --force
  fi
  if [ "$phase" != make ]; then
    $SQ bench quant --out results/quant.json --model "$(base "$k")" --quantized "runs/qat/$k" --key "$k" --python none --rounds 15 --made-by "$make"
    python3 scripts/qat_results.py "$k"
  fi
done
