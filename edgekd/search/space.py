"""The student search space: what the YAML's `space:` allows, its size, and one candidate per
choice of every setting (torch-free, so `edgekd validate` and `search --dry-run` stay light).

A MobileNetV2-style student is a stem, stages of inverted-residual blocks and a 1×1 head. The
space chooses, as Once-for-All (Cai et al. 2020) and MnasNet (Tan et al. 2019) do, a width
multiplier for the whole network and, per stage, the number of blocks, the expansion ratio and
the depthwise kernel; then the input resolution and the head's width. Per-stage (not per-block)
choices keep the space small enough to read and to search with a few dozen trials.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

from pydantic import Field, PrivateAttr, model_validator

from edgekd.config.schema import Strict


def _choices(default: list[Any], description: str) -> Any:
    return Field(default, min_length=1, description=description)


class Student(Protocol):
    """What the search needs of a candidate of any space."""

    family: ClassVar[str]

    @property
    def resolution(self) -> int: ...  # input pixels, square

    def model(self) -> dict[str, Any]: ...  # the student stage's `model:`

    def key(self) -> str: ...  # a short hash of the architecture and resolution

    def describe(self) -> str: ...  # one line for logs and the report


class Choices:
    """What every space offers the search: one list of choices per setting (`params`), the
    candidate of one choice each (`candidate`), its size and a seeded sample."""

    def params(self) -> dict[str, list[Any]]:
        raise NotImplementedError

    def candidate(self, params: dict[str, Any]) -> Student:
        raise NotImplementedError

    @property
    def size(self) -> int:
        """How many distinct students the space holds."""
        return math.prod(len(v) for v in self.params().values())

    def sample(self, count: int, seed: int = 0) -> Iterator[Student]:
        """`count` candidates: the smallest and largest first, then uniform random ones."""
        choices = self.params()
        yield self.candidate({k: min(v) for k, v in choices.items()})
        yield self.candidate({k: max(v) for k, v in choices.items()})
        rng = random.Random(seed)
        for _ in range(max(count - 2, 0)):
            yield self.candidate({k: rng.choice(v) for k, v in choices.items()})


class MobileNetSpace(Choices, Strict):
    """Choices for a MobileNetV2-family student; every list is the values a trial may pick."""

    family: Literal["mobilenetv2"] = Field(
        "mobilenetv2", description="Student family (torchvision's inverted-residual blocks)."
    )
    width: list[float] = _choices([1.0], "Width multipliers of every stage's channels.")
    channels: list[int] = Field(
        [16, 24, 32, 64, 96],
        min_length=1,
        description="Output channels of each stage at width 1.0 (the flagship student's).",
    )
    strides: list[int] = Field(
        [1, 2, 2, 2, 1], min_length=1, description="Stride of each stage's first block."
    )
    depth: list[list[int]] = Field(
        [[1], [1, 2], [1, 2], [1, 2], [1]],
        min_length=1,
        description="Per stage, the choices of how many blocks it repeats.",
    )
    expand: list[int] = _choices(
        [4], "Expansion ratios a stage may use (the first stage keeps 1, as in the paper)."
    )
    kernel: list[int] = _choices([3], "Depthwise kernel sizes a stage may use (odd).")
    resolution: list[int] = _choices([28], "Input resolutions (pixels, square).")
    last_channel: list[int] = _choices([128], "Channels of the final 1×1 conv.")
    se: list[bool] = _choices(
        [False], "Whether a stage's blocks get squeeze-and-excitation (MobileNetV3): [false, true]."
    )
    activation: list[Literal["relu6", "hardswish"]] = _choices(
        ["relu6"], "Activations a stage's blocks may use (MobileNetV3: [relu6, hardswish])."
    )
    stem_stride: int = Field(1, ge=1, le=2, description="Stride of the 3×3 stem.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the classifier.")
    _native: int | None = PrivateAttr(None)

    def at(self, native: int) -> MobileNetSpace:
        """This space for data of `native` pixels: a student of another resolution resizes its
        input first, inside the network (`input_size` of its model)."""
        bound = self.model_copy()
        bound._native = native
        return bound

    @model_validator(mode="after")
    def _consistent(self) -> MobileNetSpace:
        stages = len(self.channels)
        if len(self.strides) != stages or len(self.depth) != stages:
            raise ValueError(
                f"channels, strides and depth need one entry per stage: {stages} channels, "
                f"{len(self.strides)} strides, {len(self.depth)} depth lists"
            )
        lists: dict[str, list[Any]] = {
            "width": self.width,
            "expand": self.expand,
            "kernel": self.kernel,
            "resolution": self.resolution,
            "last_channel": self.last_channel,
            **{f"depth[{i}]": d for i, d in enumerate(self.depth)},
        }
        flags: dict[str, list[Any]] = {"se": self.se, "activation": self.activation}
        for name, values in flags.items():
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: {values} lists a value twice")
        for name, values in lists.items():
            if not values:
                raise ValueError(f"{name}: empty; give at least one choice")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: {values} lists a value twice")
            if min(values) <= 0:
                raise ValueError(f"{name}: {values}: every choice must be positive")
        if any(k % 2 == 0 for k in self.kernel):
            raise ValueError(f"kernel: {self.kernel}: depthwise kernel sizes must be odd")
        if any(s not in (1, 2) for s in self.strides) or min(self.channels) <= 0:
            raise ValueError("strides are 1 or 2 and channels positive")
        total_stride = self.stem_stride * math.prod(self.strides)
        small = [r for r in self.resolution if r < total_stride]
        if small:
            raise ValueError(
                f"resolution {small} is smaller than the network's total stride {total_stride}"
            )
        return self

    def candidate(self, params: dict[str, Any]) -> Candidate:
        """The candidate of one choice per setting, keyed as `params()` names them."""
        stages = range(len(self.channels))
        return Candidate(
            width=float(params["width"]),
            depths=tuple(int(params[f"depth{i}"]) for i in stages),
            expands=(1, *(int(params[f"expand{i}"]) for i in stages if i > 0)),
            kernels=tuple(int(params[f"kernel{i}"]) for i in stages),
            resolution=int(params["resolution"]),
            last_channel=int(params["last_channel"]),
            space=self,
            native=self._native,
            ses=tuple(bool(params.get(f"se{i}", self.se[0])) for i in stages),
            activations=tuple(str(params.get(f"act{i}", self.activation[0])) for i in stages),
        )

    def params(self) -> dict[str, list[Any]]:
        """Every setting a trial chooses and its choices (Optuna's categorical distributions)."""
        out: dict[str, list[Any]] = {"width": list(self.width)}
        for i, depths in enumerate(self.depth):
            out[f"depth{i}"] = list(depths)
            if i > 0:
                out[f"expand{i}"] = list(self.expand)
            out[f"kernel{i}"] = list(self.kernel)
            if len(self.se) > 1:  # a single choice is no setting (and keeps older studies' keys)
                out[f"se{i}"] = list(self.se)
            if len(self.activation) > 1:
                out[f"act{i}"] = list(self.activation)
        out["resolution"] = list(self.resolution)
        out["last_channel"] = list(self.last_channel)
        return out


@dataclass(frozen=True)
class Candidate:
    """One student of the space."""

    width: float
    depths: tuple[int, ...]
    expands: tuple[int, ...]
    kernels: tuple[int, ...]
    resolution: int
    last_channel: int
    space: MobileNetSpace
    native: int | None = None  # the data's resolution, when the space was bound to it
    ses: tuple[bool, ...] = ()  # per stage; () for none
    activations: tuple[str, ...] = ()  # per stage; () for relu6 everywhere
    family: ClassVar[str] = "mobilenetv2"

    def v3(self) -> list[tuple[bool, str]]:
        """Per stage: squeeze-and-excitation, activation."""
        stages = len(self.depths)
        ses = self.ses or (False,) * stages
        return list(zip(ses, self.activations or ("relu6",) * stages, strict=True))

    def blocks(self) -> list[list[int]]:
        """MobileNetV2Config rows [t, c, n, s, k]."""
        space = self.space
        rows = zip(
            self.expands, space.channels, self.depths, space.strides, self.kernels, strict=True
        )
        return [[t, c, n, s, k] for t, c, n, s, k in rows]

    def model(self) -> dict[str, Any]:
        """The student stage's `model:` for this candidate."""
        return (
            {
                "arch": "mobilenetv2",
                "width": self.width,
                "stem_stride": self.space.stem_stride,
                "last_channel": self.last_channel,
                "dropout": self.space.dropout,
                "blocks": self.blocks(),
            }
            | self._v3_model()
            | self._resize()
        )

    def _resize(self) -> dict[str, Any]:
        if self.native is None or self.resolution == self.native:
            return {}
        return {"input_size": self.resolution}

    def _v3_model(self) -> dict[str, Any]:
        """`se`/`activation` rows, only when a stage uses them (a plain MobileNetV2 candidate
        keeps the model, and so the key, it had before these choices existed)."""
        ses, activations = zip(*self.v3(), strict=True)
        out: dict[str, Any] = {}
        if any(ses):
            out["se"] = list(ses)
        if any(a != "relu6" for a in activations):
            out["activation"] = list(activations)
        return out

    def key(self) -> str:
        """A short hash of the architecture and resolution (caches of measured latency)."""
        text = json.dumps({"model": self.model(), "resolution": self.resolution}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        rows = zip(self.depths, self.expands, self.kernels, self.v3(), strict=True)
        per_stage = " ".join(
            f"{n}×t{t}k{k}{'se' if se else ''}{'hs' if act == 'hardswish' else ''}"
            for n, t, k, (se, act) in rows
        )
        return f"w{self.width:g} [{per_stage}] head {self.last_channel} @ {self.resolution}px"
