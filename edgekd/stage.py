"""The Stage contract, the stage registry and the context a running stage sees.

Stages live in `edgekd/stages/`, one file each; the registry imports that folder on first use,
so a new stage is one new file there (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rich.console import Console

from edgekd.artifacts import Artifact, sha256_path
from edgekd.config.schema import Strict, path_values
from edgekd.registry import Registry

if TYPE_CHECKING:
    from edgekd.plan import Plan


class Stage:
    """A step of the chain: a `Config`, the artifacts it `requires`, may take (`optional`) and
    `produces`, and `run`.

    Stages never call each other; they exchange artifacts through the run context. Modules
    defining stages import torch only inside `run`, so `edgekd validate` stays torch-free.
    """

    name: ClassVar[str]
    Config: ClassVar[type[Strict]]
    requires: ClassVar[tuple[str, ...]] = ()
    # Inputs taken when an earlier stage produces them (the student takes a searched
    # architecture when a search stage ran, its own `model:` otherwise).
    optional: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[tuple[str, ...]] = ()
    # Sections of the pipeline besides the stage's own config that change its result; their
    # values and the content of every file they name are part of the stage's key.
    uses: ClassVar[tuple[str, ...]] = ("seed", "device", "data", "distill")
    # True when the `student` it produces is quantized (later stages must keep it INT8).
    quantizes: ClassVar[bool] = False
    # False for stages that only summarise others and are cheap: they always run.
    cacheable: ClassVar[bool] = True
    # True for stages that train: under torchrun every rank runs them, training together in
    # DDP; the others run on rank 0 alone while the rest wait (edgekd/distributed.py).
    distributed: ClassVar[bool] = False

    def check(self, cfg: Any, plan: Plan, index: int) -> None:
        """Cross-file checks at validation time (e.g. a referenced calibration file)."""

    def fan_out(self, cfg: Any, plan: Plan) -> list[tuple[str, Any]]:
        """(label, config) per run of this stage and the stages after it, when the pipeline
        runs them several times (a search over several targets); [] for one run."""
        return []

    def reads(self, cfg: Any, plan: Plan) -> dict[str, Path]:
        """Files and folders the stage reads, by the YAML key that names them: every
        path-marked value of its config (config.schema.PathStr) unless a stage says more."""
        return {
            ".".join(map(str, loc)): plan.resolve(value)
            for loc, value in path_values(cfg)
            if value is not None
        }

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, Artifact]:
        raise NotImplementedError


STAGES: Registry[type[Stage]] = Registry("stage", package="edgekd.stages")


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

    @property
    def name(self) -> str:
        return self.plan.stages[self.index].name

    def input_path(self, name: str) -> Path:
        return self.run_dir / self.inputs[name].path

    def has_input(self, name: str) -> bool:
        """Whether the optional input `name` was produced by an earlier stage of this run."""
        return name in self.inputs

    def artifact(self, name: str, path: Path, **meta: Any) -> Artifact:
        """Register `path` (inside this stage's folder) as the output `name`."""
        return Artifact(name, str(path.relative_to(self.run_dir)), sha256_path(path), meta)

    def log(self, message: str) -> None:
        self.console.print(f"  [dim]{self.name}:[/dim] {message}")
