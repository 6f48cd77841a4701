#!/usr/bin/env bash
# The test suite: install the data if missing (one test reads the real IDX files), run
# every test of the workspace, then the kernel tests again on each lower instruction-set
# path this CPU supports (SQUEEZE_ISA=avx2, SQUEEZE_ISA=scalar), so the AVX2 and scalar
# kernels are exercised even on AVX-512 machines.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace
kernel_tests=(-p squeeze --test kinds --test gradcheck --test text)
paths=(scalar)
if grep -qw avx2 /proc/cpuinfo && grep -qw fma /proc/cpuinfo; then paths=(avx2 scalar); fi
for isa in "${paths[@]}"; do
  echo "== kernel tests with SQUEEZE_ISA=$isa"
  SQUEEZE_ISA=$isa cargo test "${kernel_tests[@]}"
done
