"""Configs of the registered model architectures (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from edgekd.config.schema import Strict
from edgekd.registry import Registry

MODEL_CONFIGS: Registry[type[Strict]] = Registry("model")


class ModelSpec(Strict):
    """`arch` names a registered architecture; the other keys are that architecture's config."""

    model_config = ConfigDict(extra="allow")
    arch: str = Field(description="Registered architecture name.")

    def arch_kwargs(self) -> dict[str, object]:
        return dict(self.model_extra or {})


@MODEL_CONFIGS.register("resnet_small")
class ResNetSmallConfig(Strict):
    """A CIFAR-style ResNet: 3×3 stride-1 stem, stages of torchvision BasicBlocks."""

    widths: list[int] = Field([32, 64, 128], min_length=1, description="Channels per stage.")
    blocks: list[int] = Field([1, 1, 1], min_length=1, description="Basic blocks per stage.")


class TorchvisionResNetConfig(Strict):
    small_input: bool = Field(
        True,
        description="Replace the 7×7/2 stem and max-pool with a 3×3/1 stem, for 28–64 px inputs.",
    )


for _name in ("resnet18", "resnet34", "resnet50"):
    MODEL_CONFIGS.register(_name)(TorchvisionResNetConfig)


IMAGENET_ROWS = 7  # rows of Sandler et al.'s ImageNet setting (zoo.IMAGENET_SETTING)


@MODEL_CONFIGS.register("mobilenetv2")
class MobileNetV2Config(Strict):
    """torchvision's MobileNetV2 blocks with a configurable stem, widths and head."""

    width: float = Field(1.0, gt=0, description="Width multiplier.")
    stem_stride: int = Field(1, ge=1, le=2, description="1 keeps 28 px inputs from collapsing.")
    blocks: list[list[int]] | None = Field(
        None,
        description="Inverted-residual setting, rows of [expansion t, channels c, repeats "
        "n, stride s] or [t, c, n, s, depthwise kernel k] (k odd, default 3, as MnasNet and "
        "MobileNetV3 use 5); null = the ImageNet setting of Sandler et al. 2018.",
    )
    last_channel: int | None = Field(
        None,
        gt=0,
        description="Channels of the final 1×1 conv; "
        "null = 1280 as in the paper (too many for tiny students).",
    )
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout before the classifier.")
    input_size: int | None = Field(
        None,
        gt=0,
        description="Resize inputs to this square size inside the network first (bilinear), "
        "so the student runs at another resolution than the data's; null: as they come.",
    )
    se: list[bool] | None = Field(
        None,
        description="Per row of `blocks`, whether its blocks get squeeze-and-excitation after "
        "the depthwise conv (MobileNetV3: squeeze to a quarter, ReLU, hard sigmoid); null: none.",
    )
    activation: list[Literal["relu6", "hardswish"]] | None = Field(
        None,
        description="Per row of `blocks`, its blocks' activation (MobileNetV3 uses hardswish in "
        "later stages); null: relu6 everywhere.",
    )

    @model_validator(mode="after")
    def _per_row(self) -> MobileNetV2Config:
        rows = len(self.blocks) if self.blocks is not None else IMAGENET_ROWS
        for name in ("se", "activation"):
            value = getattr(self, name)
            if value is not None and len(value) != rows:
                raise ValueError(f"{name} needs one entry per row of blocks ({rows}): {value}")
        return self

    @field_validator("blocks")
    @classmethod
    def _rows(cls, blocks: list[list[int]] | None) -> list[list[int]] | None:
        for row in blocks or []:
            if len(row) not in (4, 5) or min(row) < 1:
                raise ValueError(
                    f"each row is [t, c, n, s] or [t, c, n, s, k] of positive ints: {row}"
                )
            if len(row) == 5 and row[4] % 2 == 0:
                raise ValueError(f"a depthwise kernel size must be odd: {row}")
        return blocks


@MODEL_CONFIGS.register("tiny_cnn")
class TinyCNNConfig(Strict):
    """Two conv-bn-relu layers and a linear head: for tests."""

    widths: list[int] = Field([8, 16], min_length=1, description="Channels per conv layer.")
