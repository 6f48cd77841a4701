#!/usr/bin/env bash
# Long fuzzing of every loader (the suite runs 2,000 cases per loader; this runs ROUNDS
# rounds of CASES per loader, each round with its own seed). A case that panics or breaks
# an invariant fails its round and is kept by the test under target/fuzz-crashes/; a case
# that kills the process (abort, out of memory, a hang past the round's timeout) leaves
# the inputs in flight under target/fuzz-track/. Both are copied into
# crates/squeeze/tests/fuzz-corpus/, which every later run replays first. The rounds'
# outcome counts are summed into target/fuzz-reports/summary.json.
#   bash scripts/fuzz.sh [CASES_PER_LOADER (default 5000)] [ROUNDS (default 15)]
set -uo pipefail
cd "$(dirname "$0")/.."
cases=${1:-5000} rounds=${2:-15}
# absolute: the test runs in the crate's directory
corpus=$PWD/crates/squeeze/tests/fuzz-corpus reports=$PWD/target/fuzz-reports track=$PWD/target/fuzz-track
cargo test --release -p squeeze --test fuzz --no-run
rm -rf "$reports" target/fuzz-crashes && mkdir -p "$reports"
keep() { # keep input file $1 of target $2 (named FILE--HASH, as the corpus wants)
  local name=${1##*/} file hash
  file=${name#*--} hash=$(sha1sum < "$1" | cut -c1-16)
  mkdir -p "$corpus/$2" && cp "$1" "$corpus/$2/${file%%--*}--$hash"
}
failed=0
for r in $(seq 1 "$rounds"); do
  rm -rf "$track"
  SQUEEZE_FUZZ_CASES=$cases SQUEEZE_FUZZ_SEED=$r SQUEEZE_FUZZ_TRACK=$track \
    SQUEEZE_FUZZ_REPORT=$reports/round-$r.json \
    timeout 3600 cargo test -q --release -p squeeze --test fuzz every_loader -- --nocapture \
    2> "$reports/round-$r.log"
  rc=$?
  tail -3 "$reports/round-$r.log"
  if [ "$rc" -ne 0 ]; then
    failed=1
    if [ ! -s "$reports/round-$r.json" ]; then
      echo "round $r died (exit $rc): keeping the inputs in flight" >&2
      for f in "$track"/*; do t=${f##*/}; keep "$f" "${t%%--*}"; done
    fi
  fi
done
for d in target/fuzz-crashes/*/; do
  [ -d "$d" ] || continue
  for f in "$d"*; do keep "$f" "$(basename "$d")"; done
done
python3 - "$reports" "$cases" "$rounds" <<'PY'
import glob, json, sys
reports, cases, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = [json.load(open(p)) for p in sorted(glob.glob(f"{reports}/round-*.json"))]
targets = {}
for run in runs:
    for name, t in run["targets"].items():
        s = targets.setdefault(name, {"cases": 0, "loaded": 0, "refused": 0, "failures": 0, "slowest_ms": 0.0})
        for k in ("cases", "loaded", "refused", "failures"):
            s[k] += t[k]
        s["slowest_ms"] = max(s["slowest_ms"], t["slowest_ms"])
summary = {
    "command": f"bash scripts/fuzz.sh {cases} {rounds}",
    "rounds_completed": len(runs), "rounds": rounds,
    "cases": sum(t["cases"] for t in targets.values()),
    "failures": sum(t["failures"] for t in targets.values()),
    "rounds_died": rounds - len(runs),
    "seconds": round(sum(r["seconds"] for r in runs), 1),
    "peak_rss_bytes": max((r["peak_rss_bytes"] for r in runs), default=None),
    "targets": targets,
}
json.dump(summary, open(f"{reports}/summary.json", "w"), indent=2)
print(json.dumps({k: v for k, v in summary.items() if k != "targets"}))
PY
exit $failed
