#!/usr/bin/env bash
# ONNX export checked with ONNX Runtime on the real models, and results/onnx.json.
#   usage: bash scripts/check-onnx.sh PYTHON [ROUNDS]
# PYTHON must have onnxruntime, scipy, tokenizers, torch, transformers and
# sentence-transformers (the peers' environment, see bench/peers/). For each model: the
# export (`squeeze export --format onnx`), its quality under ONNX Runtime (Fashion-MNIST
# test accuracy; STS-B dev Spearman and the cosine of its embeddings to squeeze's own)
# beside squeeze's, and its speed under ONNX Runtime beside squeeze's runtime, the two
# alternating for ROUNDS rounds (images: `squeeze eval` then ONNX Runtime; text: `squeeze
# bench text`, with the exports among its peers, beside ONNX Runtime's own int8
# quantizations of the PyTorch export; then the int8 file against those alone, 15 rounds,
# bench/peers/onnx_vs_ort.py). Nothing else may run meanwhile.
# IMAGES="vgg-slim ..." measures only those image models again (PYTHON then needs only
# onnxruntime and numpy) and replaces their entries in results/onnx.json, each with its cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:?usage: scripts/check-onnx.sh PYTHON [ROUNDS]}"
rounds="${2:-3}"
sq=./target/release/squeeze
fm=/usr/share/datasets/fashion-mnist
sts=data/stsb/sts-dev.csv
out=runs/onnx
cargo build --release -q
mkdir -p "$out"

# the quantized models, made from their recipes where this checkout has none yet
[[ -n "${IMAGES:-}" ]] || for m in "zoo/vgg vgg-int8-static" "models/all-MiniLM-L6-v2 minilm-int8-dynamic" \
         "models/all-MiniLM-L6-v2 minilm-int4-gptq-g64"; do
  set -- $m
  [[ -f runs/quant/$2/model.json ]] ||
    "$sq" compress "$1" --recipe "recipes/$2.toml" --out "runs/quant/$2" --force --rounds 0
done

images=(vgg=zoo/vgg vgg-int8-static=runs/quant/vgg-int8-static vgg-slim=zoo/vgg-slim
        vgg-lowrank=zoo/vgg-lowrank vgg-binary=zoo/vgg-binary lenet5=zoo/lenet5)
if [[ -n "${IMAGES:-}" ]]; then
  picked=()
  for k in $IMAGES; do
    for kv in "${images[@]}"; do [[ ${kv%%=*} == "$k" ]] && picked+=("$kv"); done
  done
  [[ ${#picked[@]} -gt 0 ]] || { echo "IMAGES: none of '$IMAGES' is an image key" >&2; exit 2; }
  images=("${picked[@]}")
fi
texts=(minilm-f32=models/all-MiniLM-L6-v2 minilm-int8=runs/quant/minilm-int8-dynamic
       minilm-int4=runs/quant/minilm-int4-gptq-g64)
[[ -z "${IMAGES:-}" ]] || texts=()
for kv in "${images[@]}" "${texts[@]}"; do
  "$sq" export "${kv#*=}" --format onnx --out "$out/${kv%%=*}" --force
done

# images: accuracy, then interleaved timing rounds
for kv in "${images[@]}"; do
  k=${kv%%=*}; d=${kv#*=}
  "$py" bench/peers/check_onnx.py image "$out/$k/model.onnx" --data "$fm" > "$out/$k.ort-quality.json"
  for r in $(seq "$rounds"); do
    "$sq" eval "$d" --json --speed-runs 10 --out "$out/$k.ours.$r.json" > /dev/null
    "$py" bench/peers/check_onnx.py time "$out/$k/model.onnx" --data "$fm" --batch 256 \
      > "$out/$k.ort.$r.json"
  done
done

if [[ -n "${IMAGES:-}" ]]; then
  # shellcheck disable=SC2086
  python3 scripts/onnx_results.py "$out" "$rounds" --images $IMAGES > results/onnx.json.tmp
  mv results/onnx.json.tmp results/onnx.json
  echo "replaced $IMAGES in results/onnx.json"
  exit 0
fi

# text: quality of the exports under ONNX Runtime against squeeze's own embeddings
awk -F'\t' 'NF >= 7 {print $6; print $7}' "$sts" > "$out/stsb-dev-sentences.txt"
for kv in "${texts[@]}"; do
  k=${kv%%=*}; d=${kv#*=}
  "$sq" embed "$d" --input "$out/stsb-dev-sentences.txt" --out "$out/$k.ours.npy"
  "$py" bench/peers/check_onnx.py text "$out/$k" --data "$sts" --ours "$out/$k.ours.npy" \
    > "$out/$k.ort-quality.json"
done
# text: speed, the exports among the peers of one interleaved benchmark
rm -f "$out/text-bench.json"
"$sq" bench text --out "$out/text-bench.json" --python "$py" --rounds "$rounds" \
  --variant int8-dynamic=runs/quant/minilm-int8-dynamic \
  --variant int4-gptq-g64=runs/quant/minilm-int4-gptq-g64 \
  --peer-onnx f32="$out/minilm-f32" --peer-onnx int8="$out/minilm-int8" \
  --peer-onnx int4="$out/minilm-int4"

# the int8 file against ONNX Runtime's own int8 files alone, over more rounds
(cd bench/peers && "$py" onnx_vs_ort.py ../../models/all-MiniLM-L6-v2 "../../$out/minilm-int8" \
  ../../"$sts" 200 15) > "$out/int8-vs-ort.json"

python3 scripts/onnx_results.py "$out" "$rounds" > results/onnx.json.tmp
mv results/onnx.json.tmp results/onnx.json
echo "wrote results/onnx.json"
