#!/usr/bin/env bash
# The test suite: install the data if missing (one test reads the real IDX files), check
# that the README's result tables match results/*.json, run every test of the workspace,
# then the whole suite again on each lower instruction-set path this CPU supports
# (SQUEEZE_ISA=avx2, SQUEEZE_ISA=scalar), so the AVX2 and scalar kernels are exercised
# even on AVX-512 machines.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if command -v python3 > /dev/null; then
  python3 scripts/readme_numbers.py --check   # README tables match results/*.json
else
  echo "SKIPPED README numbers check: python3 is not installed" >&2
fi
# the release profile, as the demo uses: one build of the dependency tree serves both
# README commands (and the CLI tests' binary is the demo's)
cargo test --release --workspace
# the paths below the one this CPU runs by default (that one was the run above)
paths=(scalar)
if grep -qw avx512f /proc/cpuinfo; then paths=(avx2 scalar); fi
for isa in "${paths[@]}"; do
  echo "== the suite with SQUEEZE_ISA=$isa"
  SQUEEZE_ISA=$isa cargo test --release --workspace
done
