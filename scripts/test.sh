#!/usr/bin/env bash
# README command 2: install everything, then lint, type-check and run the test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# The remote-device tests start a real OpenSSH server on 127.0.0.1 with throwaway keys.
if [ ! -x /usr/sbin/sshd ] && ! command -v sshd >/dev/null 2>&1; then
  apt_install openssh-server openssh-client ||
    echo "edgekd: could not install openssh-server; the SSH tests will be skipped" >&2
fi
# tests/report/test_html_browser.py opens report.html in Debian's headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium ||
    echo "edgekd: could not install chromium; the browser test of report.html will be skipped" >&2
fi
ruff format --check edgekd tests benchmarks
ruff check edgekd tests benchmarks
mypy
set +e
pytest -q -ra "$@"
rc=$?
# pytest exits 5 when it collected no test; that is a failure of this suite, not a pass.
[ "$rc" -eq 5 ] && echo "edgekd: pytest collected no tests" >&2
exit "$rc"
