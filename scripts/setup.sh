#!/usr/bin/env bash
# Installs what squeeze needs on a fresh Debian machine: the Fashion-MNIST data set
# (Debian package dataset-fashion-mnist → /usr/share/datasets/fashion-mnist).
set -euo pipefail
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
