"""`byot`: Zhang et al. 2019, "Be Your Own Teacher": shallow exits learn from the deepest
classifier of the student itself."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.config.schema import Strict
from edgekd.distill.loss import EMBEDDING
from edgekd.distill.rules import DistillSetupError
from edgekd.distill.scheme import Scheme, SchemeSetup, SchemeStep, register

if TYPE_CHECKING:
    import torch
    from torch import nn


class BYOTConfig(Strict):
    """Zhang et al. 2019, Be Your Own Teacher: shallow exits learn from the deepest classifier."""

    exits: list[str] = Field(
        min_length=1, description="Dotted module paths in the student where exit heads attach."
    )
    alpha: float = Field(0.3, ge=0, le=1, description="KD share of each exit's loss (paper α).")
    temperature: float = Field(3.0, gt=0, description="Temperature of the exits' KD term.")
    feature_weight: float = Field(
        0.03, ge=0, description="λ: weight of the L2 hint from each exit to the deepest features."
    )


def exit_head(channels: int, width: int, num_classes: int) -> nn.Module:
    """A BYOT exit: 1×1 conv bottleneck to the deepest embedding's width, pooling, and a
    classifier; returns (logits, pooled feature)."""
    from torch import nn

    class ExitHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bottleneck = nn.Sequential(
                nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feature = self.pool(self.bottleneck(x))
            return self.fc(feature), feature

    return ExitHead()


@register("byot")
class BYOT(Scheme):
    Config = BYOTConfig
    exits: nn.ModuleList

    def student_keys(self) -> list[str]:
        return [*self.cfg.exits, EMBEDDING]

    def setup(self, setup: SchemeSetup) -> None:
        from torch import nn

        shapes = setup.shapes
        width = shapes[EMBEDDING][1]
        heads = []
        for i, path in enumerate(self.cfg.exits):
            if len(shapes[path]) != 4:
                raise DistillSetupError(
                    ("scheme", "exits", i), f"exit {path!r} must output N×C×H×W feature maps"
                )
            heads.append(exit_head(shapes[path][1], width, setup.num_classes))
        self.exits = nn.ModuleList(heads)

    def loss(self, step: SchemeStep) -> torch.Tensor:
        """Zhang et al. 2019, eq. (1)–(3), for every exit i:
        (1 - α)·CE(q_i, y) + α·KD_T(q_i ‖ q_deepest) + λ·‖F_i - F_deepest‖²."""
        import torch.nn.functional as F

        from edgekd.distill.functional import kd_loss

        cfg, student = self.cfg, step.student
        labels = step.batch.labels.to(student.logits.device)
        deepest = student.features[EMBEDDING].flatten(1).detach()
        total = student.logits.new_zeros(())
        for head, path in zip(self.exits, cfg.exits, strict=True):
            logits, feature = head(student.features[path])
            labelled = labels >= 0
            ce = (
                F.cross_entropy(logits[labelled], labels[labelled])
                if bool(labelled.any())
                else logits.sum() * 0
            )
            kd = kd_loss(logits, student.logits.detach(), cfg.temperature)
            hint = (feature - deepest).pow(2).sum(1).mean()
            total = total + (1 - cfg.alpha) * ce + cfg.alpha * kd + cfg.feature_weight * hint
        return total
