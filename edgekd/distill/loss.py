"""The loss contract: a registered `Loss` class per file in `edgekd/distill/losses/`, with its
`Config` and the facts the distiller and the trainer ask it instead of testing names.

A loss file imports no torch at module level, so `edgekd validate` can check every loss's
settings without it: `Loss` is a plain class here, and `edgekd.distill.terms.build` joins it
with `torch.nn.Module` when a distiller is built (type checkers see an nn.Module throughout).
Torch and the loss math (`edgekd.distill.functional`) are imported inside the methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from edgekd.config.schema import Strict
from edgekd.registry import Registry

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch
    from torch import nn

    from edgekd.data.datasets import Batch
    from edgekd.distill.terms import Outputs, Shapes

    ModuleBase = nn.Module
else:
    ModuleBase = object

# What a loss reads from the models: `labels` (ground truth only), `response` (the teacher's
# logits), `feature` (hooked feature maps, paired by dotted module path) or `relation` (hooked
# embeddings; batch relations, so student and teacher widths may differ).
Reads = Literal["labels", "response", "feature", "relation"]

# The input of the model's last nn.Linear: the penultimate embedding, found automatically.
EMBEDDING = "@embedding"


class FeaturePair(Strict):
    """Where a feature is captured on each model: dotted paths as in `model.named_modules()`."""

    student: str = Field(description="Dotted module path in the student, or @embedding.")
    teacher: str = Field(description="Dotted module path in the teacher, or @embedding.")
    capture: Literal["output", "input"] = Field(
        "output", description="Capture the module's output, or its (first) input."
    )


def feature_key(path: str, capture: str = "output") -> str:
    """The name a feature has in `Outputs.features`: the path, with ":input" for inputs."""
    return f"{path}:input" if capture == "input" and path != EMBEDDING else path


class LossConfig(Strict):
    """Base of every loss's settings (the YAML keys of a term besides `name` and `weight`)."""


class PairedConfig(LossConfig):
    pairs: list[FeaturePair] = Field(
        min_length=1, description="Student/teacher module pairs whose features are matched."
    )


class RelationConfig(LossConfig):
    pairs: list[FeaturePair] = Field(
        default_factory=lambda: [FeaturePair(student=EMBEDDING, teacher=EMBEDDING)],
        min_length=1,
        description="Features whose batch relations are matched; default: the embeddings "
        "feeding each model's last linear layer.",
    )


class Loss(ModuleBase):
    """Base of registered losses: `forward(student, teacher, batch) -> Tensor`.

    A loss reads the logits and the features named by its config's `pairs`; modules it trains
    with the student (connectors, translators, embedding heads) are built in `setup` once the
    feature shapes are known, and their parameters join the student's optimizer. `progress`
    (0 → 1 over the stage's training) is set by the distiller before every step.
    """

    Config: ClassVar[type[LossConfig]] = LossConfig
    reads: ClassVar[Reads] = "response"
    # How many teachers may feed this term at once; None: any (average/random/split modes).
    max_teachers: ClassVar[int | None] = None
    # A phase before the student trains (FT's paraphraser); `pretrain` runs it.
    pretrains: ClassVar[bool] = False
    cfg: Any
    progress: float

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.progress = 0.0

    @property
    def needs_teacher(self) -> bool:
        return self.reads != "labels"

    @property
    def pairs(self) -> list[FeaturePair]:
        return list(getattr(self.cfg, "pairs", []))

    def student_keys(self) -> list[str]:
        return [feature_key(p.student, p.capture) for p in self.pairs]

    def teacher_keys(self) -> list[str]:
        return [feature_key(p.teacher, p.capture) for p in self.pairs]

    def alone_until(self) -> float:
        """Share of the stage's training during which this term trains alone (FitNets' first
        stage); 0 for most losses."""
        return 0.0

    def pretrain_epochs(self) -> float:
        """Passes over the training data the `pretrain` phase takes."""
        return 0.0

    def setup(self, shapes: Shapes) -> None:
        """Build trained modules from the feature shapes (called once, before training)."""

    def pretrain(self, teacher_outputs: Iterable[Outputs], device: torch.device) -> None:
        """Train what must be ready before the student's training (FT's paraphraser)."""

    def features(self, student: Outputs, teacher: Outputs) -> list[tuple[torch.Tensor, ...]]:
        return [
            (student.features[s], teacher.features[t])
            for s, t in zip(self.student_keys(), self.teacher_keys(), strict=True)
        ]

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[type[Loss]] = Registry("loss", package="edgekd.distill.losses")


def labels_of(batch: Batch, like: torch.Tensor) -> torch.Tensor:
    """The batch's labels on the device of `like` (-1: an unlabeled image)."""
    return batch.labels.to(like.device)


def need(teacher: Outputs | None) -> Outputs:
    """The teacher's outputs of a term that reads the teacher (the distiller always passes
    them; None would be an internal error)."""
    assert teacher is not None, "a teacher-reading loss was called without teacher outputs"
    return teacher


class PairedLoss(Loss):
    """A loss summed over feature pairs, each student feature through its own connector."""

    Config = PairedConfig
    reads = "feature"
    connectors: nn.ModuleList

    def setup(self, shapes: Shapes) -> None:
        from torch import nn

        from edgekd.distill.terms import connector

        self.connectors = nn.ModuleList(
            connector(shapes.student[s], shapes.teacher[t], i)
            for i, (s, t) in enumerate(zip(self.student_keys(), self.teacher_keys(), strict=True))
        )

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        from edgekd.distill.terms import match_spatial

        total = student.logits.new_zeros(())
        for conn, (s, t) in zip(
            self.connectors, self.features(student, need(teacher)), strict=True
        ):
            total = total + self.pair_loss(*match_spatial(conn(s), t.detach()))
        return total


class RelationLoss(Loss):
    """Batch relations of each feature pair; widths may differ, so no connector is needed."""

    Config = RelationConfig
    reads = "relation"

    def relation(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        total = student.logits.new_zeros(())
        for s, t in self.features(student, need(teacher)):
            total = total + self.relation(s.flatten(1), t.detach().flatten(1))
        return total
