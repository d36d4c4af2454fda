"""A structural search space derived from the teacher itself (torch-free).

Instead of a new family, the students are the teacher's own network with fewer blocks per stage
and fewer channels per stage, the way NVIDIA ModelOpt's FastNAS and Minitron (Muralidharan et
al. 2024) shrink a trained network: depth by keeping a stage's first blocks, width by keeping
the channels DepGraph ranks most important (`edgekd/search/inherit.py`). Each candidate starts
from the teacher's weights (`inherit: true`), so a short proxy training already scores it near
what it will reach, and the student stage starts the winner from them too.

The teacher must be a `resnet_small` (stages of BasicBlocks); its widths and blocks come from the
teacher stage's `model:`, and `bind` attaches them when the plan is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, model_validator

from edgekd.config.schema import Strict
from edgekd.search.space import Choices, MobileNetSpace


class TeacherSpace(Choices, Strict):
    """Choices for a student cut from the teacher: per stage, how many of its blocks to keep
    and what fraction of its channels."""

    family: Literal["teacher"] = Field(
        description="Students are the teacher's own network, shrunk (a resnet_small teacher)."
    )
    width: list[float] = Field(
        [0.25, 0.5, 0.75, 1.0],
        min_length=1,
        description="Fractions of each stage's teacher channels a stage may keep (0 < f ≤ 1).",
    )
    depth: list[list[int]] | None = Field(
        None,
        description="Per stage, how many of the teacher's blocks it may keep; null: 1 up to all.",
    )
    round_to: int = Field(8, gt=0, description="Channel counts are multiples of this.")
    resolution: list[int] = Field([28], min_length=1, description="Input resolutions (pixels).")
    inherit: bool = Field(
        True, description="Start each candidate (and the winner) from the teacher's weights."
    )
    _teacher: tuple[tuple[int, ...], tuple[int, ...]] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _consistent(self) -> TeacherSpace:
        if len(set(self.width)) != len(self.width) or not all(0 < f <= 1 for f in self.width):
            raise ValueError(f"width: {self.width}: distinct fractions with 0 < f ≤ 1")
        for i, depths in enumerate(self.depth or []):
            if not depths or min(depths) < 1 or len(set(depths)) != len(depths):
                raise ValueError(f"depth[{i}]: {depths}: distinct block counts, each ≥ 1")
        return self

    def bind(self, widths: list[int], blocks: list[int]) -> TeacherSpace:
        """This space for a teacher of these stage widths and blocks (ValueError: it does not
        fit that teacher)."""
        if self.depth is not None:
            if len(self.depth) != len(blocks):
                raise ValueError(
                    f"depth has {len(self.depth)} stages; the teacher has {len(blocks)}"
                )
            for i, (depths, most) in enumerate(zip(self.depth, blocks, strict=True)):
                if max(depths) > most:
                    raise ValueError(
                        f"depth[{i}]: {depths}: the teacher's stage {i} has {most} blocks"
                    )
        bound = self.model_copy()
        bound._teacher = (tuple(widths), tuple(blocks))
        return bound

    @property
    def teacher(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if self._teacher is None:
            raise RuntimeError("a teacher space is used before `bind` gave it the teacher")
        return self._teacher

    def channels(self, stage: int) -> list[int]:
        """The channel counts stage `stage` may keep: each fraction of the teacher's, rounded
        to `round_to` (at least `round_to`, at most the teacher's)."""
        full = self.teacher[0][stage]
        counts = {min(full, max(self.round_to, round(full * f / self.round_to) * self.round_to))
                  for f in self.width}  # fmt: skip
        return sorted(counts)

    def params(self) -> dict[str, list[Any]]:
        widths, blocks = self.teacher
        out: dict[str, list[Any]] = {}
        for i in range(len(widths)):
            out[f"width{i}"] = self.channels(i)
            out[f"depth{i}"] = (
                sorted(self.depth[i]) if self.depth else list(range(1, blocks[i] + 1))
            )
        out["resolution"] = list(self.resolution)
        return out

    def candidate(self, params: dict[str, Any]) -> TeacherCandidate:
        stages = range(len(self.teacher[0]))
        return TeacherCandidate(
            widths=tuple(int(params[f"width{i}"]) for i in stages),
            depths=tuple(int(params[f"depth{i}"]) for i in stages),
            resolution=int(params["resolution"]),
            teacher=self.teacher,
            inherit=self.inherit,
        )


@dataclass(frozen=True)
class TeacherCandidate:
    """One student cut from the teacher: channels and blocks per stage."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    resolution: int
    teacher: tuple[tuple[int, ...], tuple[int, ...]]
    inherit: bool
    family: ClassVar[str] = "teacher"

    def model(self) -> dict[str, Any]:
        """The student stage's `model:` for this candidate."""
        return {"arch": "resnet_small", "widths": list(self.widths), "blocks": list(self.depths)}

    def key(self) -> str:
        text = json.dumps({"model": self.model(), "resolution": self.resolution}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        stages = " ".join(f"{n}×{c}" for n, c in zip(self.depths, self.widths, strict=True))
        return f"teacher cut [{stages}] @ {self.resolution}px"


Space = MobileNetSpace | TeacherSpace
