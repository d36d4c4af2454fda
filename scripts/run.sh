#!/usr/bin/env bash
# README command 1: install everything, then run the flagship pipeline.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec edgekd run "${1:-pipelines/mobilenet_jetson.yaml}" "${@:2}"
