"""The scheme contract: how students and teachers are arranged while a student trains.

One registered `Scheme` class per file in `edgekd/distill/schemes/` (offline, dml, byot), with
its `Config`. Like losses, scheme files import no torch at module level (`edgekd validate`
checks their settings); `edgekd.distill.terms.build` makes them modules, so what a scheme
trains beside the student (DML's peers, BYOT's exit heads) is saved in the stage's checkpoint
and never exported.
"""

from __future__ import annotations

from collections.abc import Callable
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

    def setup(
        self,
        student: nn.Module,
        shapes: dict[str, torch.Size],
        num_classes: int,
        fresh_student: bool,
        hflip: bool,
    ) -> None:
        """Build what the scheme trains, once the student's feature shapes are known.
        `fresh_student`: the student is untrained; `hflip`: mirror images are allowed."""

    def loss(
        self,
        distiller: Distiller,
        student: Outputs,
        teachers: dict[int, Outputs],
        batch: Batch,
        images: torch.Tensor,
    ) -> torch.Tensor | None:
        """The scheme's own term (logged under its name), or None when it adds none."""
        return None


SCHEMES: Registry[type[Scheme]] = Registry("scheme", package="edgekd.distill.schemes")


def register(name: str) -> Callable[[type[Scheme]], type[Scheme]]:
    """Register a scheme class under `name`, which is also the name its term is logged as."""

    def add(cls: type[Scheme]) -> type[Scheme]:
        cls.name = name
        return SCHEMES.register(name)(cls)

    return add
