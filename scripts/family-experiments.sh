#!/usr/bin/env bash
# The BERT family's results (results/family.json): each test fixture (tools/
# family_fixtures.py) exported with `squeeze export --format hf` and loaded back by
# sentence-transformers, its embeddings against the fixture's golden ones; and a dense
# encoder of bert-base's size (random weights) compressed to dynamic int8 through `squeeze
# compress`, its peak RSS and wall time measured by /usr/bin/time, then exported to ONNX.
#   usage: bash scripts/family-experiments.sh PYTHON   (torch, transformers, sentence-transformers)
set -euo pipefail
cd "$(dirname "$0")/.."
py="${1:?usage: scripts/family-experiments.sh PYTHON}"
sq=./target/release/squeeze
out=runs/family
cargo build --release -q
mkdir -p "$out"
[[ -f $out/bert-base-random/model.safetensors ]] ||
  "$py" tools/family_fixtures.py --bert-base models/all-MiniLM-L6-v2 "$out/bert-base-random"
cmd=(compress "$out/bert-base-random" --recipe recipes/minilm-int8-dynamic.toml
     --out "$out/bert-base-int8" --force --rounds 0)
/usr/bin/time -f '%M %e' -o "$out/bert-base-int8.time" "$sq" "${cmd[@]}"
"$sq" export "$out/bert-base-int8" --format onnx --out "$out/bert-base-int8-onnx" --force
fx=crates/squeeze/tests/fixtures/family
for f in bert roberta xlm-roberta distilbert; do
  "$sq" export "$fx/$f" --format hf --out "$out/hf-$f" --force
  "$py" tools/family_fixtures.py --check-export "$out/hf-$f" "$fx/$f" > "$out/hf-$f.check.json"
done
python3 - "$out" "${cmd[*]}" <<'PY'
import json, os, sys
out, cmd = sys.argv[1], sys.argv[2]
hf = {f: json.load(open(f"{out}/hf-{f}.check.json"))["min_cosine_to_golden"]
      for f in ["bert", "roberta", "xlm-roberta", "distilbert"]}
rss_kb, wall = open(f"{out}/bert-base-int8.time").read().split()
size = lambda d: sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
cpu = open("/proc/cpuinfo").read()
model = next(l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name"))
family = next(l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("cpu family"))
res = {"bert-base-int8": {
    "what": "a randomly initialized encoder of bert-base's size (12 layers, 768 wide, 30522-token "
            "vocabulary) compressed to dynamic int8 (every Linear int8 per channel, embeddings int8)",
    "command": f"squeeze {cmd}",
    "input_made_by": f"PYTHON tools/family_fixtures.py --bert-base models/all-MiniLM-L6-v2 {out}/bert-base-random",
    "measured_by": "bash scripts/family-experiments.sh PYTHON",
    "peak_rss_bytes": int(rss_kb) * 1024,
    "wall_s": float(wall),
    "f32_weights_bytes": os.path.getsize(f"{out}/bert-base-random/model.safetensors"),
    "int8_model_bytes": os.path.getsize(f"{out}/bert-base-int8/model.safetensors"),
    "onnx_bytes": os.path.getsize(f"{out}/bert-base-int8-onnx/model.onnx"),
    "cpu": f"{model} (family {family})",
}, "hf-export": {
    "what": "each test fixture exported by squeeze in its own HF layout and loaded by "
            "sentence-transformers: the lowest cosine of its embeddings to the fixture's golden ones",
    "command": "squeeze export crates/squeeze/tests/fixtures/family/FAMILY --format hf --out runs/family/hf-FAMILY",
    "measured_by": "bash scripts/family-experiments.sh PYTHON",
    "min_cosine_to_golden": hf,
    "cpu": f"{model} (family {family})",
}}
json.dump(res, open("results/family.json", "w"), indent=2)
print(json.dumps(res, indent=2))
PY
