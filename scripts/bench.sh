#!/usr/bin/env bash
# Runs benchmarks one after another from a clean clone of HEAD, so that editing this checkout
# while they run (they take hours on 2 cores) changes neither what runs nor the commit their docs
# name; each benchmark's docs/benchmarks/*.md is copied back here when it finishes.
#
#   bash scripts/bench.sh "kd_methods.py --seeds 0 1 2 --sweep" "flagship.py" "search.py --part budgets"
#
# Nothing else should run on the machine meanwhile: the benchmarks time things. Logs go to
# <clone>/bench.log; the clone is $EDGEKD_BENCH_DIR (default ../edgekd-bench-<commit>), reused
# (and its runs/ kept, so interrupted benchmarks resume) when it exists.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$#" -gt 0 ] || { echo "usage: bash scripts/bench.sh \"BENCHMARK.py [ARGS]\" ..." >&2; exit 2; }
source scripts/setup.sh
here=$PWD
head=$(git rev-parse --short HEAD)
clone=${EDGEKD_BENCH_DIR:-$here/../edgekd-bench-$head}
[ -d "$clone/.git" ] || git clone -q "$here" "$clone"
git -C "$clone" fetch -q "$here" HEAD  # a reused clone may predate this commit
git -C "$clone" checkout -q "$head"
ln -sfn "$here/.venv" "$clone/.venv"
cd "$clone"
failed=0
for bench in "$@"; do
  read -r -a argv <<<"$bench"
  echo "== $(date -u +%FT%TZ) ${argv[*]}" | tee -a bench.log
  start=$(date +%s)
  if PYTHONPATH="$clone" "$here/.venv/bin/python" "benchmarks/${argv[0]}" "${argv[@]:1}" >>bench.log 2>&1; then
    echo "== done in $(( ($(date +%s) - start) / 60 )) min" | tee -a bench.log
  else
    echo "== FAILED after $(( ($(date +%s) - start) / 60 )) min; see $clone/bench.log" | tee -a bench.log
    failed=1
  fi
  # only the docs this benchmark rewrote (a failed one may still have rendered what it has)
  git status --porcelain -- docs/benchmarks | sed -n 's/^\( M\|??\) //p' | while read -r doc; do
    cp "$doc" "$here/$doc" && echo "   wrote $doc" | tee -a bench.log
    git checkout -q -- "$doc" 2>/dev/null || rm -f "$doc"
  done
done
exit "$failed"
