#!/usr/bin/env bash
# A new user's first day, end to end, on a clean clone of this repository's HEAD: the test
# command, the demo, every `squeeze` command of the README's "Commands" block in order,
# then the test command again. After each phase the clone's `git status` must be clean
# (no command may change, add or leave a file outside the ignored runs/, target/, models/,
# data/). Records the seconds of each phase under this CPU's name in
# results/setup-time.json (key `newcomer`).
#
# The commands run as written, with three changes a reader would make too: optional
# `[...]` parts are left out, the peer interpreter placeholder `/path/to/venv/bin/python`
# becomes `none` (no PyTorch peer), and `train`/`distill` run one epoch (their defaults
# train for tens of minutes; the point here is that they work and leave the checkout
# clean). `squeeze demo` is not run twice: scripts/demo.sh ran it.
#
#   bash scripts/newcomer.sh            # cold build in the clone (what a newcomer gets)
#   NEWCOMER_TARGET=DIR bash scripts/newcomer.sh   # reuse a cargo target directory
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
git clone -q "$repo" "$dir/squeeze"
cd "$dir/squeeze"
if [ -n "${NEWCOMER_TARGET:-}" ]; then export CARGO_TARGET_DIR=$NEWCOMER_TARGET; fi
# the model is git-ignored: a clone fetches it (setup.sh), or reuses this checkout's copy
if [ -d "$repo/models/all-MiniLM-L6-v2" ]; then
  mkdir -p models && cp -r "$repo/models/all-MiniLM-L6-v2" models/
fi
declare -A secs
clean() {
  local st; st=$(git status --porcelain)
  if [ -n "$st" ]; then
    echo "newcomer: after $1 the checkout is not clean:" >&2; echo "$st" >&2; exit 1
  fi
}
phase() {
  local name=$1; shift
  echo "== newcomer: $name" >&2
  local s; s=$(date +%s)
  "$@" > "$dir/$name.log" 2>&1 || { echo "newcomer: $name failed, log:" >&2; tail -40 "$dir/$name.log" >&2; exit 1; }
  secs[$name]=$(( $(date +%s) - s ))
  clean "$name"
}
readme_commands() {
  python3 - <<'PY'
import re
text = open("README.md").read()
block = text.split("## Commands", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
for line in block.splitlines():
    line = line.split(" #")[0].strip()
    if not line.startswith("squeeze "):
        continue
    line = re.sub(r"\s*\[[^\]]*\]", "", line)
    line = line.replace("/path/to/venv/bin/python", "none")
    words = line.split()
    if words[1] == "demo":
        continue
    if words[1] in ("train", "distill"):
        if "--epochs" in words:
            words[words.index("--epochs") + 1] = "1"
        else:
            words += ["--epochs", "1"]
    print(" ".join(words))
PY
}
commands() {
  local bin=${CARGO_TARGET_DIR:-target}/release/squeeze
  while read -r line; do
    echo "\$ $line"
    # shellcheck disable=SC2086
    "$bin" ${line#squeeze }
  done < <(readme_commands)
}
phase test bash scripts/test.sh
phase demo bash scripts/demo.sh
phase commands commands
phase test-again bash scripts/test.sh
cd "$repo"
# the shared target now holds the workspace crates built from the clone's paths (tests
# embed their manifest directory): drop them so the checkout rebuilds its own
if [ -n "${NEWCOMER_TARGET:-}" ]; then
  cargo clean --release -p squeeze -p squeeze-cli > /dev/null 2>&1 || true
fi
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
family=$(lscpu | sed -n 's/^CPU family: *//p' | head -1)
isa=AVX2; grep -qw avx512f /proc/cpuinfo && isa=AVX-512
python3 - "$cpu (family $family, $isa), $(nproc) threads" "${secs[test]}" "${secs[demo]}" "${secs[commands]}" "${secs[test-again]}" "${NEWCOMER_TARGET:+shared target}" <<'PY'
import json, pathlib, sys
cpu, test, demo, cmds, again, shared = sys.argv[1], *map(int, sys.argv[2:6]), sys.argv[6]
p = pathlib.Path("results/setup-time.json")
d = json.loads(p.read_text()) if p.exists() else {}
d.setdefault("newcomer", {})[cpu] = {
    "test_s": test, "demo_s": demo, "readme_commands_s": cmds, "test_again_s": again,
    "build": "shared target directory" if shared else "cold build in a clean clone",
    "checkout_clean": True, "command": "bash scripts/newcomer.sh",
}
p.write_text(json.dumps(d, indent=2) + "\n")
PY
echo "newcomer: every phase passed and left the checkout clean; results/setup-time.json updated" >&2
