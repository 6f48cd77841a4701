#!/usr/bin/env bash
# Reproduces every number of issue 11 (post-training quantization): the quantized models
# from the recipes in recipes/ (squeeze compress), then the side-by-side benchmarks that
# write results/quant.json (vgg, lenet5 static int8 vs our f32 and PyTorch's static int8),
# results/minilm.json (MiniLM f32, dynamic int8, int4 RTN and GPTQ vs ONNX Runtime) and
# results/kernels.json. PYTHON must have torch, onnxruntime, transformers and
# sentence-transformers (see bench/peers/). Nothing else may run meanwhile: the timings
# are interleaved within each benchmark, but two benchmarks must not share the cores.
# OUT names the folder the three results files go to: results/ (the default) on the
# project's main machine, results/kinds/<kind>/ on another machine kind (e.g. OUT=results/kinds/avx2
# on an AVX2-only CPU), so that one kind's run does not replace another's.
#   usage: PYTHON=/path/to/python [OUT=folder] bash scripts/quant-experiments.sh [compress|bench|all]
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
py="${PYTHON:-python3}"
out="${OUT:-results}"
mkdir -p "$out"
sq=./target/release/squeeze
cargo build --release -q
compress() {  # model recipe
  "$sq" compress "$1" --recipe "recipes/$2.toml" --out "runs/quant/$2" --force --rounds 0
}
if [[ $what == compress || $what == all ]]; then
  for r in minilm-int8-dynamic minilm-int4-{rtn,gptq}-g{128,64} minilm-int4-gptq-g64-weight-only; do
    compress models/all-MiniLM-L6-v2 "$r"
  done
  for a in vgg lenet5; do compress "zoo/$a" "$a-int8-static"; done
fi
if [[ $what == bench || $what == all ]]; then
  for a in vgg lenet5; do
    # lenet5's batch-1 pass takes ~0.1 ms, where this machine's noise moves single
    # rounds by 2x; on Intel machines with AMX the tile unit's speed changes about 3x
    # between rounds (ours and PyTorch's alike): 15 rounds for a stable median
    rounds=15
    "$sq" bench quant --out "$out/quant.json" --model "zoo/$a" --quantized "runs/quant/$a-int8-static" \
      --key "$a-int8-static" --python "$py" --rounds "$rounds" \
      --made-by "squeeze compress zoo/$a --recipe recipes/$a-int8-static.toml --out runs/quant/$a-int8-static"
  done
  # the peers run in one process beside ours, timed after ours in every round: 5 rounds
  # give the per-round ratios' median a spread to be read against
  "$sq" bench text --out "$out/minilm.json" --python "$py" --rounds 5 \
    --variant int8-dynamic=runs/quant/minilm-int8-dynamic \
    --variant int4-rtn-g128=runs/quant/minilm-int4-rtn-g128 \
    --variant int4-gptq-g128=runs/quant/minilm-int4-gptq-g128 \
    --variant int4-rtn-g64=runs/quant/minilm-int4-rtn-g64 \
    --variant int4-gptq-g64=runs/quant/minilm-int4-gptq-g64 \
    --variant int4-gptq-g64-weight-only=runs/quant/minilm-int4-gptq-g64-weight-only
  "$sq" bench kernels --out "$out/kernels.json"
fi
