#!/usr/bin/env bash
# results/reliability.json: what squeeze guarantees about files, measured.
#  - fuzz: the loaders' outcome counts from the long fuzzer (scripts/fuzz.sh, whose
#    summary this reads; run it first, or pass --fuzz CASES ROUNDS to run it here);
#  - fault_injection: a training run killed (SQUEEZE_FAULT) at each of the checkpoint's
#    write boundaries, resumed, and compared byte for byte with an uninterrupted run; and a
#    torn checkpoint, which must be refused;
#  - memory: peak RSS of `squeeze embed` (3 sentences, and one 65 MB line) on
#    all-MiniLM-L6-v2 in f32 and int8, beside the weights file's size.
#   bash scripts/reliability.sh [--fuzz CASES ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
export RELIABILITY_COMMAND="bash scripts/reliability.sh${*:+ $*}"
if [ "${1:-}" = "--fuzz" ]; then bash scripts/fuzz.sh "$2" "$3" || true; fi
cargo build --release -p squeeze-cli
bin=target/release/squeeze w=target/reliability
rm -rf "$w" && mkdir -p "$w"
train() { # OUT EXTRA...: the small MLP, 3 epochs on 2,000 images
  local out=$1; shift
  "$bin" train --arch mlp --widths 64,32 --epochs 3 --limit-train 2000 --out "$out" "$@" > /dev/null 2>> "$w/train.log"
}
train "$w/whole"
faults=()
for step in 1 2 3 4 5 6; do
  set +e
  SQUEEZE_FAULT=2:$step train "$w/f$step"; killed=$?
  train "$w/f$step" --resume; resumed=$?
  set -e
  same=false
  if [ "$resumed" -eq 0 ] && cmp -s "$w/whole/model.safetensors" "$w/f$step/model.safetensors"; then same=true; fi
  faults+=("{\"epoch\": 2, \"boundary\": $step, \"killed_exit\": $killed, \"resume_exit\": $resumed, \"bit_identical\": $same}")
done
ck=$w/whole/checkpoint/model.safetensors
head -c $(( $(stat -c %s "$ck") / 2 )) "$ck" > "$ck.cut" && mv "$ck.cut" "$ck"
set +e
torn=$("$bin" train --arch mlp --widths 64,32 --epochs 4 --limit-train 2000 --out "$w/whole" --resume 2>&1 | tail -1)
set -e
m=models/all-MiniLM-L6-v2 q=$w/minilm-int8
"$bin" compress "$m" --recipe recipes/minilm-int8-dynamic.toml --out "$q" --rounds 0 > /dev/null 2>&1
printf 'A man is playing a guitar.\nA woman is slicing an onion.\nThe cat sits on the mat.\n' > "$w/three.txt"
python3 -c "open('$w/long.txt','w').write('hello world. ' * 5_000_000 + '\n')"
rss() { /usr/bin/time -f %M "$bin" embed "$1" --input "$2" --out "$w/e.npy" 2>&1 >/dev/null | tail -1; }
mem=()
for model in "$m" "$q"; do
  for input in three long; do
    kb=$(rss "$model" "$w/$input.txt")
    mem+=("{\"model\": \"$model\", \"input\": \"$input\", \"weights_bytes\": $(stat -c %s "$model/model.safetensors"), \"peak_rss_kb\": $kb}")
  done
done
python3 - "$torn" "$(IFS=,; echo "${faults[*]}")" "$(IFS=,; echo "${mem[*]}")" <<'PY'
import json, os, subprocess, sys
torn, faults, mem = sys.argv[1], json.loads("[" + sys.argv[2] + "]"), json.loads("[" + sys.argv[3] + "]")
cpu = subprocess.run("lscpu | sed -n 's/^Model name: *//p'", shell=True, capture_output=True, text=True).stdout.strip()
fam = subprocess.run("lscpu | sed -n 's/^CPU family: *//p'", shell=True, capture_output=True, text=True).stdout.strip()
model = subprocess.run("lscpu | sed -n 's/^Model: *//p'", shell=True, capture_output=True, text=True).stdout.strip()
out = {"command": os.environ["RELIABILITY_COMMAND"], "cpu": f"{cpu} (family {fam}, model {model})"}
summary = "target/fuzz-reports/summary.json"
if os.path.exists(summary):
    out["fuzz"] = json.load(open(summary))
else:
    out["fuzz"] = {"note": "run bash scripts/fuzz.sh first"}
out["fault_injection"] = {
    "what": "squeeze train (mlp 64,32, 3 epochs, 2,000 images) killed with SQUEEZE_FAULT=2:N at each write boundary of epoch 2's checkpoint, then --resume; bit_identical compares model.safetensors with an uninterrupted run",
    "boundaries": faults,
    "torn_checkpoint_resume": torn,
}
for r in mem:
    r["peak_rss_mb"] = round(r["peak_rss_kb"] / 1024, 1)
    r["over_weights_mb"] = round(r["peak_rss_kb"] / 1024 - r["weights_bytes"] / 2**20, 1)
out["memory"] = {"what": "peak RSS of squeeze embed MODEL --input FILE (three: 3 sentences; long: one 65 MB line)", "runs": mem}
json.dump(out, open("results/reliability.json", "w"), indent=2)
print(json.dumps(out["fault_injection"], indent=1)); print(json.dumps(out["memory"], indent=1))
PY
