"""A checked pipeline: its config, its stages, its loss terms, its scheme and its targets.

A leaf module: it imports no stage, so stages may name `Plan` and the pipeline may build one
without either importing the other at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.config.loader import Document, Loc
from edgekd.config.schema import PipelineConfig, Strict, TargetProfile

if TYPE_CHECKING:
    from edgekd.stage import Stage


@dataclass
class StageSpec:
    """One `- stage:` entry of the YAML, validated: its class, its config and where it is."""

    index: int
    name: str
    stage: Stage
    cfg: Any
    line: int

    @property
    def dirname(self) -> str:
        return f"{self.index:02d}_{self.name}"

    @property
    def loc(self) -> Loc:
        return ("stages", self.index)


@dataclass
class Plan:
    """A fully validated pipeline; nothing in it is checked again once a stage runs."""

    path: Path
    doc: Document
    config: PipelineConfig
    stages: list[StageSpec] = field(default_factory=list)
    # (name, weight, the loss's validated settings) for every term of `distill.losses`
    losses: list[tuple[str, float, Strict]] = field(default_factory=list)
    scheme: str = "offline"  # `distill.scheme`'s name, and its validated settings
    scheme_cfg: Any = None
    targets: list[TargetProfile] = field(default_factory=list)
    # A stage that fans out (a search over several targets): its index, and per label the plan
    # whose stages from there on run in runs/<name>/<label>/, sharing the stages before it.
    fan_index: int | None = None
    variants: list[tuple[str, Plan]] = field(default_factory=list)

    def resolve(self, value: str) -> Path:
        """A path from the YAML: relative to the working directory, else to the YAML's folder."""
        path = Path(value).expanduser()
        if path.is_absolute() or path.exists():
            return path
        beside = self.path.parent / path
        return beside if beside.exists() else path

    def not_found(self, value: str) -> str:
        """The end of a missing-file message: where edgekd looked."""
        return f"{value!r} not found (looked in {Path.cwd()} and {self.path.parent})"

    def produced_before(self, index: int) -> set[str]:
        """Artifact names the stages before `index` produce."""
        return {name for spec in self.stages[:index] for name in spec.stage.produces}

    def stage_named(self, name: str) -> StageSpec | None:
        """The first stage of that name, if the pipeline has one."""
        return next((s for s in self.stages if s.name == name), None)
