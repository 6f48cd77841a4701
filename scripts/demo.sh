#!/usr/bin/env bash
# The main job: install the data if missing, build squeeze, run the demo on Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p squeeze-cli
./target/release/squeeze demo "$@"
