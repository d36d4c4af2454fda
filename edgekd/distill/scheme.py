"""The scheme contract: how students and teachers are arranged while a student trains.

One registered `Scheme` class per file in `edgekd/distill/schemes/` (offline, dml, byot), with
its `Config`. Like losses, scheme files import no torch at module level (`edgekd validate`
checks their settings); `edgekd.distill.terms.build` makes them modules, so what a scheme
trains beside the student (DML's peers, BYOT's exit heads) is saved in the stage's checkpoint
and never exported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from edgekd.config.schema import Strict
from edgekd.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgekd.data.datasets import Batch
    from edgekd.distill.distiller import Distiller
    from edgekd.distill.terms import Outputs

    ModuleBase = nn.Module
else:
    ModuleBase = object


@dataclass
class SchemeSetup:
    """What a scheme builds its modules from, once the student's feature shapes are known."""

    student: nn.Module
    shapes: dict[str, torch.Size]  # the student's hooked features (`student_keys`)
    num_classes: int
    fresh_student: bool  # the student is untrained (DML re-initialises its peers)
    hflip: bool  # mirror images are allowed


@dataclass
class SchemeStep:
    """One training step as a scheme sees it."""

    distiller: Distiller
    student: Outputs
    teachers: dict[int, Outputs]
    batch: Batch
    images: torch.Tensor  # the batch's images on the device


class Scheme(ModuleBase):
    """Base of registered schemes: the extra loss a scheme adds to the distiller's terms."""

    Config: ClassVar[type[Strict]] = Strict
    name: ClassVar[str] = "offline"
    cfg: Any

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    def student_keys(self) -> list[str]:
        """Features of the student the scheme reads (hooked like the losses' features)."""
        return []

    def setup(self, setup: SchemeSetup) -> None:
        """Build what the scheme trains beside the student."""

    def loss(self, step: SchemeStep) -> torch.Tensor | None:
        """The scheme's own term (logged under its name), or None when it adds none."""
        return None


SCHEMES: Registry[type[Scheme]] = Registry(
    "scheme", package="edgekd.distill.schemes", name_attr="name"
)
register = SCHEMES.register  # @register("name"): the name its term is logged as, too
