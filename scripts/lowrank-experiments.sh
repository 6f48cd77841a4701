#!/usr/bin/env bash
# Runs the experiments of results/lowrank.json: each recipe through `squeeze compress` (the
# factorized model measured against its original in the same process, speeds interleaved
# over 5 rounds); for a fine-tuned key its `-oneshot` recipe (the same factorization without
# fine-tuning) is compressed too, for the accuracy before fine-tuning. The search key runs
# `squeeze search` (both of its candidates become keys); vgg-knapsack-flops-33 fine-tunes the
# search's knapsack choice as is, and vgg-late-flops-33 the opposite allocation, each beside
# the uniform candidate's recipe run again on the same machine (`-uniform`). The two vgg
# factorizations are then
# measured again side by side with zoo/vgg in one `squeeze report` run (their speeds in the
# results come from it). Then collects everything into results/lowrank.json.
# Usage: scripts/lowrank-experiments.sh [KEY...] (default: all). Models go to
# runs/lowrank/KEY; a key whose report exists is collected, not re-run (FORCE=1 re-runs).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/squeeze}
MINILM=${MINILM:-models/all-MiniLM-L6-v2}
mkdir -p runs/lowrank
keys=("$@")
[ ${#keys[@]} -gt 0 ] || keys=(mlp-svd-50 vgg-svd-50 vgg-spatial-svd-50 minilm-svd-30 minilm-asvd-30
  minilm-whiten-30 minilm-whiten-30-recovered minilm-whiten-30-ffn minilm-whiten-30-ffn-recovered
  vgg-search-flops-33 vgg-knapsack-flops-33 vgg-late-flops-33)
SEARCH=runs/lowrank/vgg-search-flops-33
# recipe $1 without its last pass (the fine-tuning), written to $2
oneshot() {
  python3 -c 'import sys; t=open(sys.argv[1]).read(); end="[[passes]]\ntype = \"finetune\"\n"; assert t.endswith(end); open(sys.argv[2],"w").write(t[:-len(end)])' "$1" "$2"
}
for k in "${keys[@]}"; do
  if [ "$k" = vgg-search-flops-33 ]; then
    # the search makes both candidates (searched ratios, one uniform ratio) with equal
    # fine-tuning; `squeeze report` then measures both against zoo/vgg in one process
    if [ -f "$SEARCH.against-original.json" ] && [ -z "${FORCE:-}" ]; then
      echo "== $k (report present)"; continue
    fi
    echo "== $k"
    "$BIN" search zoo/vgg --recipe recipes/vgg-search.toml --budget flops=0.33 --out "$SEARCH" --force
    for c in searched uniform; do
      # the candidate's recipe, kept in recipes/ so that `squeeze compress` re-makes it,
      # and without its fine-tuning pass for the accuracy before fine-tuning
      key=vgg-search-flops-33; [ $c = uniform ] && key=vgg-uniform-flops-33
      { echo "# Written by: $BIN search zoo/vgg --recipe recipes/vgg-search.toml --budget flops=0.33 (its $c candidate)."
        cat "$SEARCH/$c/recipe.toml"; } > "recipes/$key.toml"
      oneshot "$SEARCH/$c/recipe.toml" "runs/lowrank/$key-oneshot.toml"
      "$BIN" compress zoo/vgg --recipe "runs/lowrank/$key-oneshot.toml" --out "$SEARCH-$c-oneshot" --force --rounds 0
      # the same candidate fine-tuned with another seed: how far apart the two candidates
      # are against how far one candidate moves with the seed
      sed 's/^seed = 0$/seed = 1/' "recipes/$key.toml" > "runs/lowrank/$key-seed1.toml"
      "$BIN" compress zoo/vgg --recipe "runs/lowrank/$key-seed1.toml" --out "$SEARCH-$c-seed1" --force --rounds 0
    done
    "$BIN" report zoo/vgg "$SEARCH/searched" "$SEARCH/uniform" --rounds 5 --json "$SEARCH.against-original.json"
    continue
  fi
  if [ "$k" = vgg-knapsack-flops-33 ] || [ "$k" = vgg-late-flops-33 ]; then
    if [ -f "runs/lowrank/$k/report.json" ] && [ -z "${FORCE:-}" ]; then
      echo "== $k (report present)"; continue
    fi
    echo "== $k"
    oneshot "recipes/$k.toml" "runs/lowrank/$k-oneshot.toml"
    "$BIN" compress zoo/vgg --recipe "runs/lowrank/$k-oneshot.toml" --out "runs/lowrank/$k-oneshot" --force --rounds 0
    "$BIN" compress zoo/vgg --recipe recipes/vgg-uniform-flops-33.toml --out "runs/lowrank/$k-uniform" --force --rounds 5
    "$BIN" compress zoo/vgg --recipe "recipes/$k.toml" --out "runs/lowrank/$k" --force --rounds 5
    continue
  fi
  # the encoders' batch-1 ratio is noisier (a sentence is ~1 ms): 15 rounds
  rounds=5
  case $k in
    mlp-*) model=zoo/mlp ;;
    vgg-*) model=zoo/vgg ;;
    minilm-*) model=$MINILM; rounds=15 ;;
    *) echo "unknown key $k" >&2; exit 2 ;;
  esac
  if [ -f "runs/lowrank/$k/report.json" ] && [ -z "${FORCE:-}" ]; then
    echo "== $k (report present)"; continue
  fi
  echo "== $k"
  if [ -f "recipes/$k-oneshot.toml" ]; then
    "$BIN" compress "$model" --recipe "recipes/$k-oneshot.toml" --out "runs/lowrank/$k-oneshot" --force --rounds 0
  fi
  start=$(date +%s)
  "$BIN" compress "$model" --recipe "recipes/$k.toml" --out "runs/lowrank/$k" --force --rounds "$rounds"
  echo "$(( $(date +%s) - start ))" > "runs/lowrank/$k.seconds"
done
# the two vgg factorizations (unfolding, spatial) measured side by side with the original
# in one quiet process, after both exist
PAIR=runs/lowrank/vgg-factorized.against-original.json
if [ -f runs/lowrank/vgg-svd-50/report.json ] && [ -f runs/lowrank/vgg-spatial-svd-50/report.json ] \
   && { [ ! -f "$PAIR" ] || [ -n "${FORCE:-}" ]; }; then
  "$BIN" report zoo/vgg runs/lowrank/vgg-svd-50 runs/lowrank/vgg-spatial-svd-50 --rounds 5 --json "$PAIR"
fi
python3 scripts/lowrank_results.py "${keys[@]}"
