#!/usr/bin/env bash
# Reproduces the distillation results of issue 12. Images (results/distill.json): a vgg student about 4×
# smaller than the committed zoo/vgg teacher (widths 16-16-M-32-32-M-60-60-M), trained with
# the same epochs and seeds (a) from scratch, (b) with Hinton soft targets, (c) with soft
# targets plus a FitNets hint on the second stage's output; then `squeeze bench distill`
# collects each run's test accuracy, measures student and teacher cost side by side, and
# writes results/distill.json; the depthwise-separable vgg (recipes/vgg-dwsep.toml) distilled
# from zoo/vgg is the `dwsep-vgg` row, and with four of its five 3×3 convolutions separable
# (recipes/vgg-dwsep-quarter.toml) the `dwsep-vgg-quarter` row. Text (results/minilm.json): 3-layer students of
# all-MiniLM-L6-v2 (every other layer; and with half the heads and FFN units) distilled on
# the STS-B train sentences, then `squeeze bench text` beside the teacher and the peers.
# CondenseNet (`condense`): a DenseNet-BC trained 3 epochs, then 3 more epochs either with
# learned group convolution (recipes/densenet-bc-condense.toml) or plainly (its dense
# counterpart, recipes/densenet-bc-finetune.toml); then that 6-epoch dense model condensed
# over 6 more epochs while distilling from itself (recipes/densenet-bc-condense-kd.toml),
# then 4 and 6 more epochs (two cosine runs) of the materialized condensed model distilled
# from it.
# `squeeze bench distill` measures both condensed models against the 6-epoch dense one
# (in the teacher's place): `condensenet` (the latter) and `condensenet-same-budget`.
# Finished runs are skipped and interrupted ones resumed from their per-epoch checkpoints,
# so the script can be rerun until it completes. PYTHON: as for scripts/quant-experiments.sh.
#   usage: bash scripts/distill-experiments.sh [train|bench|condense|text|all]   (EPOCHS, SEEDS from env)
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
  [[ -f runs/vgg-dwsep-init/model.json ]] ||
    "$sq" compress zoo/vgg --recipe recipes/vgg-dwsep.toml --out runs/vgg-dwsep-init --rounds 0
  run runs/vgg-dwsep distill --teacher zoo/vgg --student runs/vgg-dwsep-init --epochs 3
  # then a warm restart to 5 epochs, as measured
  grep -q '"epochs": 5' runs/vgg-dwsep/distill.json ||
    "$sq" distill --teacher zoo/vgg --student runs/vgg-dwsep-init --out runs/vgg-dwsep \
      --epochs 5 --resume > runs/vgg-dwsep-resume.log 2>&1
  # four of the five convolutions separable: 0.24 of vgg's FLOPs
  [[ -f runs/vgg-dwsep-quarter-init/model.json ]] ||
    "$sq" compress zoo/vgg --recipe recipes/vgg-dwsep-quarter.toml --out runs/vgg-dwsep-quarter-init --rounds 0
  run runs/vgg-dwsep-quarter distill --teacher zoo/vgg --student runs/vgg-dwsep-quarter-init --epochs 5
fi
if [[ $what == bench || $what == all ]]; then
  dirs() { local d=(); for s in $seeds; do d+=("runs/distill/$1-s$s"); done; local IFS=,; echo "${d[*]}"; }
  "$sq" bench distill --out results/distill.json --teacher zoo/vgg \
    --variant "student-scratch=$(dirs scratch)" \
    --variant "student-kd=$(dirs kd)" \
    --variant "student-kd-hints=$(dirs kdh)" \
    --variant dwsep-vgg=runs/vgg-dwsep \
    --variant dwsep-vgg-quarter=runs/vgg-dwsep-quarter
fi
if [[ $what == condense || $what == all ]]; then
  run runs/densenet-bc train --arch densenet-bc --depth 3 --epochs 3
  for r in condense finetune; do
    [[ -f runs/densenet-bc-$r/model.json ]] ||
      "$sq" compress runs/densenet-bc --recipe "recipes/densenet-bc-$r.toml" \
        --out "runs/densenet-bc-$r" --rounds 0 > "runs/densenet-bc-$r.log" 2>&1
  done
  # condensing the 6-epoch dense model itself, distilled from it, over 6 epochs
  [[ -f runs/densenet-bc-condense-kd/model.json ]] ||
    "$sq" compress runs/densenet-bc-finetune --recipe recipes/densenet-bc-condense-kd.toml \
      --out runs/densenet-bc-condense-kd --rounds 0 > runs/densenet-bc-condense-kd.log 2>&1
  # 4 more epochs of the condensed (materialized) model, distilled from the dense one
  run runs/densenet-bc-condense-kd-ft distill --teacher runs/densenet-bc-finetune \
    --student runs/densenet-bc-condense-kd --epochs 4 --lr 0.01
  # a second cosine run of 6 epochs from that one
  run runs/densenet-bc-condense-kd-ft2 distill --teacher runs/densenet-bc-finetune \
    --student runs/densenet-bc-condense-kd-ft --epochs 6 --lr 0.01
  "$sq" bench distill --out results/distill.json --teacher runs/densenet-bc-finetune \
    --variant condensenet=runs/densenet-bc-condense-kd-ft2 \
    --variant condensenet-same-budget=runs/densenet-bc-condense
fi
if [[ $what == text || $what == all ]]; then
  minilm=models/all-MiniLM-L6-v2
  for s in 3layer 3layer-narrow; do
    init="runs/minilm-${s/layer/l}-init"
    [[ -f $init/model.json ]] ||
      "$sq" compress "$minilm" --recipe "recipes/minilm-$s-init.toml" --out "$init" --rounds 0
    run "runs/minilm-${s/layer/l}" distill --teacher "$minilm" --student "$init" \
      --optimizer adamw --lr 2e-4 --weight-decay 0.01 --epochs 3 --batch-size 32
  done
  # one more epoch of the 3-layer student on the STS-B train sentences plus WordNet's examples
  [[ -f data/wordnet/examples.txt ]] || python3 scripts/wordnet-sentences.py
  run runs/minilm-3l-wn distill --teacher "$minilm" --student runs/minilm-3l \
    --sentences data/stsb/sts-train.csv --sentences data/wordnet/examples.txt \
    --optimizer adamw --lr 1e-4 --weight-decay 0.01 --epochs 1 --batch-size 32
  "$sq" bench text --out results/minilm.json --python "${PYTHON:-python3}" \
    --variant distilled-3layer=runs/minilm-3l --variant distilled-3layer-narrow=runs/minilm-3l-narrow \
    --variant distilled-3layer-wordnet=runs/minilm-3l-wn
fi
