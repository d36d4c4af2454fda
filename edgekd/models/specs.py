"""Configs of the registered model architectures (torch-free)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from importlib.util import find_spec
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from edgekd.config.schema import Strict
from edgekd.registry import Registry, did_you_mean

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


# torchvision 0.29's classification builders, `torchvision.models.list_models(module=
# torchvision.models)`, kept here so that `edgekd validate` checks a name without importing
# torch; tests/models/test_named_models.py compares it with the installed torchvision.
_TORCHVISION_NAMES = (
    "alexnet convnext_base convnext_large convnext_small convnext_tiny densenet121 densenet161 "
    "densenet169 densenet201 efficientnet_b0 efficientnet_b1 efficientnet_b2 efficientnet_b3 "
    "efficientnet_b4 efficientnet_b5 efficientnet_b6 efficientnet_b7 efficientnet_v2_l "
    "efficientnet_v2_m efficientnet_v2_s googlenet inception_v3 maxvit_t mnasnet0_5 mnasnet0_75 "
    "mnasnet1_0 mnasnet1_3 mobilenet_v2 mobilenet_v3_large mobilenet_v3_small regnet_x_16gf "
    "regnet_x_1_6gf regnet_x_32gf regnet_x_3_2gf regnet_x_400mf regnet_x_800mf regnet_x_8gf "
    "regnet_y_128gf regnet_y_16gf regnet_y_1_6gf regnet_y_32gf regnet_y_3_2gf regnet_y_400mf "
    "regnet_y_800mf regnet_y_8gf resnet101 resnet152 resnet18 resnet34 resnet50 "
    "resnext101_32x8d resnext101_64x4d resnext50_32x4d shufflenet_v2_x0_5 shufflenet_v2_x1_0 "
    "shufflenet_v2_x1_5 shufflenet_v2_x2_0 squeezenet1_0 squeezenet1_1 swin_b swin_s swin_t "
    "swin_v2_b swin_v2_s swin_v2_t vgg11 vgg11_bn vgg13 vgg13_bn vgg16 vgg16_bn vgg19 vgg19_bn "
    "vit_b_16 vit_b_32 vit_h_14 vit_l_16 vit_l_32 wide_resnet101_2 wide_resnet50_2"
)
TORCHVISION_CLASSIFIERS = tuple(_TORCHVISION_NAMES.split())


class NamedModelConfig(Strict):
    """A model a library builds by name (its subclasses check the name against the library's
    list), untrained: weights come from the stage's `weights:` file."""

    name: str = Field(description="The model's name in its library's list of models.")
    options: dict[str, object] = Field(
        default_factory=dict,
        description="Keyword arguments of the library's builder (dropout rates, ...).",
    )


@MODEL_CONFIGS.register("torchvision")
class TorchvisionConfig(NamedModelConfig):
    """Any torchvision classification builder by name: `{arch: torchvision, name:
    efficientnet_b0}` (`torchvision.models.list_models()` gives the names)."""

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in TORCHVISION_CLASSIFIERS:
            raise ValueError(
                f"torchvision has no classification model {value!r};"
                f"{did_you_mean(value, list(TORCHVISION_CLASSIFIERS))} "
                "(torchvision.models.list_models(module=torchvision.models) lists them)"
            )
        return value


@cache
def timm_names() -> frozenset[str]:
    """timm 1.0.31's model names (`timm.list_models()`), from the snapshot shipped beside this
    file, so `edgekd validate` checks a name without importing timm or torch."""
    text = resources.files("edgekd.models").joinpath("timm_models.txt").read_text()
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


@MODEL_CONFIGS.register("timm")
class TimmConfig(NamedModelConfig):
    """Any timm model by name, built exportable (no ONNX-hostile ops) for the data's channels
    and classes: `{arch: timm, name: resnet10t}` (`timm.list_models()` gives the names; options
    go to timm.create_model). Needs the extra: `pip install 'edgekd[timm]'`."""

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        names = timm_names()
        if value not in names:
            raise ValueError(
                f"timm has no model {value!r};{did_you_mean(value, sorted(names))} "
                "(timm.list_models() lists them)"
            )
        if find_spec("timm") is None:
            raise ValueError(
                f"timm model {value!r} needs timm, which is not installed: "
                "pip install 'edgekd[timm]' (timm==1.0.31)"
            )
        return value


# Named models a compression stage cannot handle, as benchmarks/named_models.py found them
# (docs/benchmarks/named_models.md, at 64 px, untrained): (arch, name) -> {stage: reason}.
# efficientnet_b0's QAT NaN there is not listed: its untrained outputs are near zero, a
# calibration artefact that trained weights should not share (not verified). `edgekd validate`
# stops a pipeline whose student is one of them before anything trains (stages/qat.py).
_ONNX_FAKE_QUANTIZE = (
    "NNCF exports its fake quantizers here as OpenVINO's FakeQuantize op, which onnxruntime "
    "and TensorRT cannot load"
)
KNOWN_FAILURES: dict[tuple[str, str], dict[str, str]] = {
    ("torchvision", "shufflenet_v2_x0_5"): {
        "prune": "torch-pruning fails on its channel shuffle (ZeroDivisionError)",
        "qat": _ONNX_FAKE_QUANTIZE,
    },
    ("torchvision", "squeezenet1_1"): {"qat": _ONNX_FAKE_QUANTIZE},
    ("torchvision", "swin_t"): {
        "prune": "torch-pruning's dependency graph of it outgrew 23 GB of memory at 64 px and "
        "was killed",
    },
    ("torchvision", "vit_b_32"): {
        "prune": "torch-pruning breaks its attention's reshape (heads are not pruned as groups)",
    },
    ("timm", "ghostnet_100"): {"qat": _ONNX_FAKE_QUANTIZE},
    ("timm", "edgenext_xx_small"): {
        "prune": "torch-pruning indexes past a pruned dimension (IndexError)",
        "qat": "NNCF inserts a fake quantizer on an integer tensor",
    },
    ("timm", "mobilevit_xxs"): {
        "prune": "torch-pruning breaks its attention's reshape",
        "qat": _ONNX_FAKE_QUANTIZE,
    },
    ("timm", "deit_tiny_patch16_224"): {
        "prune": "torch-pruning breaks its attention's reshape (heads are not pruned as groups)",
    },
}


def known_failure(spec: ModelSpec, stage: str) -> str | None:
    """Why `stage` fails on `spec`'s named model, or None when it is not known to."""
    name = spec.arch_kwargs().get("name")
    return KNOWN_FAILURES.get((spec.arch, str(name)), {}).get(stage)
