#!/usr/bin/env bash
# Installs everything edgekd needs into ./.venv and the Fashion-MNIST data set; safe to rerun.
# Sourced by scripts/run.sh and scripts/test.sh so both README commands start from nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${EDGEKD_VENV:-.venv}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# Python virtual environment (Debian ships venv separately as python3-venv).
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    apt_install python3-venv || { echo "edgekd: cannot create a virtual environment; install python3-venv" >&2; exit 1; }
    "$PYTHON" -m venv "$VENV"
  fi
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp="$VENV/.edgekd-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev,timm]'
  touch "$stamp"
fi

# Fashion-MNIST, the embedded default data set: Debian/Ubuntu package dataset-fashion-mnist.
FMNIST=/usr/share/datasets/fashion-mnist
if [ -z "${EDGEKD_DATA:-}" ] && [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  apt_install dataset-fashion-mnist || echo "edgekd: could not install dataset-fashion-mnist;" \
    "set EDGEKD_DATA to a folder with the four Fashion-MNIST idx files" >&2
fi
export PATH="$PWD/$VENV/bin:$PATH"
