#!/usr/bin/env bash
# The test suite: install the data if missing (one test reads the real IDX files), then
# run every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo test --workspace
