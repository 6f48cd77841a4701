#!/usr/bin/env bash
# Exports all-MiniLM-L6-v2 with `squeeze export --format hf` and has the Python reference
# stack (sentence-transformers) load the result unchanged and compare its embeddings of
# the golden sentences with the original's → results/minilm-export.json.
# Usage: scripts/check-export.sh PYTHON   (a Python with torch + sentence-transformers)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:?usage: scripts/check-export.sh PYTHON}"
cargo build --release -p squeeze-cli
./target/release/squeeze export models/all-MiniLM-L6-v2 --format hf --out runs/minilm-hf --force
"$py" tools/minilm_reference.py compare models/all-MiniLM-L6-v2 runs/minilm-hf 2>/dev/null | tail -1 \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); r["command"]="scripts/check-export.sh '"$py"'"; print(json.dumps(r, indent=2))' \
  > results/minilm-export.json
cat results/minilm-export.json
