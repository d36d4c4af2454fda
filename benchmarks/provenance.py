"""Which commit of edgekd a benchmark ran: the line every docs/benchmarks/*.md states."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """`commit abc1234`, with a note when the working tree had uncommitted changes to code."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "edgekd", "pipelines", "benchmarks", "weights")
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")
