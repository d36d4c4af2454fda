"""Configs of the registered losses (torch-free, so `edgekd validate` can check them)."""

from __future__ import annotations

from pydantic import Field

from edgekd.config.schema import Strict
from edgekd.registry import Registry

LOSS_CONFIGS: Registry[type[Strict]] = Registry("loss")


@LOSS_CONFIGS.register("ce")
class CEConfig(Strict):
    """Cross-entropy against the ground-truth labels."""

    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing factor.")


@LOSS_CONFIGS.register("kd")
class KDConfig(Strict):
    """Hinton et al. 2015: KL between temperature-softened distributions, scaled by T²."""

    temperature: float = Field(4.0, gt=0, description="Softmax temperature T.")
