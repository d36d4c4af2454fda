"""The torch side of the loss and scheme contracts: what a term sees (`Outputs`, `Shapes`),
the modules losses share (connectors, spatial matching), and `build`, which turns a registered
torch-free `Loss` or `Scheme` class into an `nn.Module` (see edgekd/distill/loss.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Outputs:
    """A model's logits and the named features captured by hooks on dotted module paths."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Shapes:
    """What a loss needs to know to build its trained modules."""

    student: dict[str, torch.Size]
    teacher: dict[str, torch.Size]
    num_classes: int
    num_data: int
    labels: torch.Tensor | None = None  # of the training set (-1: unlabeled), for CRD


class ShapeError(ValueError):
    """Two features that cannot be paired, with the reason; `pair` is its index in `pairs`."""

    def __init__(self, pair: int, message: str) -> None:
        super().__init__(message)
        self.pair = pair


C = TypeVar("C")


_MODULE_CLASSES: dict[type, type] = {}


def module_class(cls: type[C]) -> type[C]:
    """`cls` with `nn.Module` joined in (once per class): loss and scheme files stay
    torch-free at import, and their instances are ordinary modules (parameters, buffers,
    state_dict, .to(device))."""
    if issubclass(cls, nn.Module):
        return cls
    if cls not in _MODULE_CLASSES:
        _MODULE_CLASSES[cls] = type(cls.__name__, (cls, nn.Module), {"__module__": cls.__module__})
    return _MODULE_CLASSES[cls]


def build(cls: type[C], cfg: Any) -> C:
    """An instance of the registered class `cls` as a module, configured by `cfg`."""
    return module_class(cls)(cfg)  # type: ignore[call-arg]


def match_spatial(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two feature maps to the other's height and width."""
    if s.ndim != 4 or t.ndim != 4 or s.shape[2:] == t.shape[2:]:
        return s, t
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    return F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)


def connector(student: torch.Size, teacher: torch.Size, pair: int) -> nn.Module:
    """A trained map from the student's feature width to the teacher's: 1×1 conv + BN for
    feature maps, linear for vectors, identity when the widths already agree."""
    if len(student) == 4 and len(teacher) == 4:
        if student[1] == teacher[1]:
            return nn.Identity()
        return nn.Sequential(
            nn.Conv2d(student[1], teacher[1], 1, bias=False), nn.BatchNorm2d(teacher[1])
        )
    if len(student) == 2 and len(teacher) == 2:
        return nn.Identity() if student[1] == teacher[1] else nn.Linear(student[1], teacher[1])
    if len(student) == 4 and len(teacher) == 2:
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(student[1], teacher[1])
        )
    raise ShapeError(
        pair,
        f"cannot pair a student feature of shape {tuple(student[1:])} with a teacher feature "
        f"of shape {tuple(teacher[1:])}: hook a student layer with spatial maps, or pick "
        "a teacher layer of the same rank",
    )
