#!/usr/bin/env bash
# The test suite: install what is missing (scripts/setup.sh: the data, the model, and a
# check of rustc, python3 and pip), check that the README's result tables match
# results/*.json, run every test of the workspace on this CPU's default kernel path, then
# the kernel and model tests again on each lower instruction-set path this CPU supports
# (SQUEEZE_ISA=avx512vnni on AMX machines, avx512, avxvnni, avx2, scalar), so the lower kernels
# are exercised even on the newest machines. The kernel tests loop over every path
# themselves; the model tests run whole layers and models through whichever path is active. The CLI and
# README-command tests run once: they exercise files and options, not kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 scripts/readme_numbers.py --check   # README tables match results/*.json
# the release profile, as the demo uses: one build of the dependency tree serves both
# README commands (and the CLI tests' binary is the demo's)
cargo test --release --workspace
# the paths below the one this CPU runs by default (that one was the run above)
paths=(scalar)
if grep -qw avx512f /proc/cpuinfo; then paths=(avx2 scalar); fi
# on a VNNI machine the default path is avx512vnni: avx512 runs the integer kernels'
# non-VNNI forms beside the AVX-512 float ones
if grep -qw avx512_vnni /proc/cpuinfo; then paths=(avx512 avx2 scalar); fi
# on an AMX machine (Intel Sapphire Rapids and later) the default path is amx: the
# convolution's VNNI tiles run under avx512vnni
if grep -qw amx_int8 /proc/cpuinfo && grep -qw avx512_vnni /proc/cpuinfo; then
  paths=(avx512vnni avx512 avx2 scalar)
fi
# AVX-VNNI (the VEX-encoded 256-bit vpdpbusd): beside AVX-512 one more lower path, before
# avx2; without AVX-512 it is the default path, and avx2 runs the integer kernels' AVX2 forms
if grep -qw avx_vnni /proc/cpuinfo; then
  with=()
  for p in "${paths[@]}"; do
    if [[ $p == avx2 ]]; then with+=(avxvnni); fi
    with+=("$p")
  done
  if [[ " ${with[*]} " != *" avxvnni "* ]]; then with=(avx2 "${with[@]}"); fi
  paths=("${with[@]}")
fi
for isa in "${paths[@]}"; do
  echo "== kernel and model tests with SQUEEZE_ISA=$isa"
  SQUEEZE_ISA=$isa cargo test --release -p squeeze --lib \
    --test kinds --test model --test quant --test qat --test text --test lowrank
done
