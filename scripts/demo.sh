#!/usr/bin/env bash
# The main job: install the data if missing, build squeeze, run the demo on Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p squeeze-cli
# where cargo put it (CARGO_TARGET_DIR moves the build)
"${CARGO_TARGET_DIR:-target}/release/squeeze" demo "$@"
