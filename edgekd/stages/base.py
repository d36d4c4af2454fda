"""The Stage contract, the stage registry and the context a running stage sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.console import Console

from edgekd.artifacts import Artifact, sha256_path
from edgekd.config.schema import Strict
from edgekd.registry import Registry

if TYPE_CHECKING:
    from edgekd.pipeline import Plan


class Stage:
    """A step of the chain: a `Config`, the artifacts it `requires` and `produces`, and `run`.

    Stages never call each other; they exchange artifacts through the run context. Modules
    defining stages import torch only inside `run`, so `edgekd validate` stays torch-free.
    """

    name: ClassVar[str]
    Config: ClassVar[type[Strict]]
    requires: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[tuple[str, ...]] = ()
    # Parts of the pipeline besides the stage's own config that change its result.
    uses: ClassVar[tuple[str, ...]] = ("seed", "device", "data", "distill")
    # False for stages that only summarise others and are cheap: they always run.
    cacheable: ClassVar[bool] = True

    def check(self, cfg: Any, plan: Plan, index: int) -> None:
        """Cross-file checks at validation time (e.g. a referenced calibration file)."""

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, Artifact]:
        raise NotImplementedError


STAGES: Registry[type[Stage]] = Registry("stage")


@dataclass
class StageContext:
    """What a running stage may touch: its folder, its inputs, and a place for its metrics."""

    plan: Plan
    index: int
    dir: Path
    run_dir: Path
    inputs: dict[str, Artifact]
    key: str
    console: Console
    metrics: dict[str, Any] = field(default_factory=dict)
    teacher_override: Path | None = None  # TAKD: the assistant teaches in place of teacher 0

    def input_path(self, name: str) -> Path:
        return self.run_dir / self.inputs[name].path

    def artifact(self, name: str, path: Path, **meta: Any) -> Artifact:
        """Register `path` (inside this stage's folder) as the output `name`."""
        return Artifact(name, str(path.relative_to(self.run_dir)), sha256_path(path), meta)

    def log(self, message: str) -> None:
        self.console.print(f"  [dim]{self.plan.stages[self.index].name}:[/dim] {message}")
