"""Third-party noise goes to the stage's log file, not the console.

A run prints edgekd's own progress and results. What the libraries print on their own, NNCF's
TracerWarnings, torch's "No CUDA runtime is found" and pytree deprecation notices, and their
other warnings and log records, is written to `<stage folder>/stage.log` while the stage runs;
`edgekd run --verbose` leaves it on the console. Python's `warnings` and `logging` machinery is
redirected for the stage's duration (and restored after): nothing is filtered out, only moved.
Progress bars the libraries draw themselves (NNCF's statistics collection) still show.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

# the libraries whose loggers a stage's log file takes over
THIRD_PARTY = (
    "torch",
    "nncf",
    "torch_pruning",
    "openvino",
    "onnxruntime",
    "onnxscript",
    "optuna",
    "timm",
    "matplotlib",
    "PIL",
    "py.warnings",
)
_verbose = False


def set_verbose(verbose: bool) -> None:
    """`edgekd run --verbose`: leave the libraries' output on the console."""
    global _verbose
    _verbose = verbose


@contextmanager
def third_party_to(log_file: Path) -> Iterator[None]:
    """Inside, warnings and the third-party loggers write to `log_file` (appended)."""
    if _verbose:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as out:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        saved = []
        for name in THIRD_PARTY:
            logger = logging.getLogger(name)
            saved.append((logger, logger.handlers[:], logger.propagate))
            logger.handlers, logger.propagate = [handler], False
        try:
            with warnings.catch_warnings():  # restores showwarning on the way out
                warnings.showwarning = _writer(out)
                yield
        finally:
            for logger, handlers, propagate in saved:
                logger.handlers, logger.propagate = handlers, propagate


def _writer(out: TextIO) -> Any:
    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        out.write(warnings.formatwarning(message, category, filename, lineno, line))
        out.flush()

    return show
