"""Registered architectures; each builder takes its config, input channels and class count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchvision.models import mobilenetv2, resnet
from torchvision.models._utils import _make_divisible
from torchvision.ops.misc import Conv2dNormActivation, SqueezeExcitation

from edgekd.errors import EdgeKDError
from edgekd.models import specs
from edgekd.registry import Registry

Builder = Callable[..., nn.Module]
MODELS: Registry[Builder] = Registry("model")

# Sandler et al. 2018, Table 2: [expansion t, output channels c, repeats n, first stride s].
IMAGENET_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


class Layers(nn.Sequential):
    """nn.Sequential whose forward runs its numbered layers only. NNCF adds a hook store as a
    child of the model it quantizes, and nn.Sequential's forward would call it as a layer
    ("HookStorage is missing the required forward function": QAT of a resnet_small or
    tiny_cnn student failed so). Same children, so the same state_dict keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name, layer in self._modules.items():
            if name.isdigit() and layer is not None:
                x = layer(x)
        return x


def build(spec: specs.ModelSpec, in_channels: int, num_classes: int) -> nn.Module:
    """Build `spec.arch` with its validated config."""
    config = specs.MODEL_CONFIGS.get(spec.arch).model_validate(spec.arch_kwargs())
    return MODELS.get(spec.arch)(config, in_channels, num_classes)


@MODELS.register("resnet_small")
def resnet_small(cfg: specs.ResNetSmallConfig, in_channels: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, cfg.widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(cfg.widths[0]),
        nn.ReLU(inplace=True),
    ]
    inplanes = cfg.widths[0]
    for i, (width, repeats) in enumerate(zip(cfg.widths, cfg.blocks, strict=True)):
        for j in range(repeats):
            stride = 2 if i > 0 and j == 0 else 1
            downsample = None
            if stride != 1 or inplanes != width:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, width, 1, stride, bias=False), nn.BatchNorm2d(width)
                )
            layers.append(resnet.BasicBlock(inplanes, width, stride, downsample))
            inplanes = width
    return Layers(
        nn.Sequential(*layers),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inplanes, num_classes)),
    )


def _torchvision_resnet(name: str) -> Builder:
    def build_resnet(
        cfg: specs.TorchvisionResNetConfig, in_channels: int, num_classes: int
    ) -> nn.Module:
        model: resnet.ResNet = getattr(resnet, name)(weights=None, num_classes=num_classes)
        if cfg.small_input:
            model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return model

    return build_resnet


for _name in ("resnet18", "resnet34", "resnet50"):
    MODELS.register(_name)(_torchvision_resnet(_name))


@MODELS.register("torchvision")
def torchvision_model(
    cfg: specs.TorchvisionConfig, in_channels: int, num_classes: int
) -> nn.Module:
    """torchvision's own builder, untrained, with `num_classes` outputs; for inputs of other
    than 3 channels its first convolution is rebuilt to take them."""
    import torchvision

    options = {"num_classes": num_classes, **cfg.options}
    if cfg.name in ("googlenet", "inception_v3"):
        options.setdefault("aux_logits", False)  # one output, like every other model here
        options.setdefault("init_weights", True)
    model = torchvision.models.get_model(cfg.name, weights=None, **options)
    if in_channels != 3:
        name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(
            parent,
            name.rpartition(".")[2],
            nn.Conv2d(
                in_channels,
                conv.out_channels,
                conv.kernel_size,  # type: ignore[arg-type]
                conv.stride,  # type: ignore[arg-type]
                conv.padding,  # type: ignore[arg-type]
                bias=conv.bias is not None,
            ),
        )
    return model


@MODELS.register("timm")
def timm_model(cfg: specs.TimmConfig, in_channels: int, num_classes: int) -> nn.Module:
    """timm's own model, untrained and `exportable` (timm then avoids ops that ONNX export
    cannot trace), with the data's channels and classes."""
    try:
        import timm
    except ImportError as exc:
        raise EdgeKDError(
            f"{{arch: timm, name: {cfg.name}}} needs timm: pip install 'edgekd[timm]'"
        ) from exc
    options: dict[str, Any] = {"exportable": True, **cfg.options}
    model: nn.Module = timm.create_model(
        cfg.name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options
    )
    return model


@MODELS.register("mobilenetv2")
def mobilenet_v2(cfg: specs.MobileNetV2Config, in_channels: int, num_classes: int) -> nn.Module:
    rows = cfg.blocks or IMAGENET_SETTING
    model = (Resizing if cfg.input_size else mobilenetv2.MobileNetV2)(
        num_classes=num_classes,
        width_mult=cfg.width,
        inverted_residual_setting=[row[:4] for row in rows],
        dropout=cfg.dropout,
    )
    per_block = [
        (row[4] if len(row) == 5 else 3, (cfg.se or [False] * len(rows))[i],
         (cfg.activation or ["relu6"] * len(rows))[i])
        for i, row in enumerate(rows)
        for _ in range(row[2])
    ]  # fmt: skip
    for block, (kernel, se, activation) in zip(model.features[1:-1], per_block, strict=True):
        if kernel != 3:
            widen_depthwise(block, kernel)
        v3_block(block, se, activation)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(
        in_channels, stem.out_channels, 3, cfg.stem_stride, 1, bias=False
    )
    if cfg.last_channel is not None:
        head = model.features[-1]
        head_in = head[0].in_channels
        model.features[-1] = type(head)(
            head_in,
            cfg.last_channel,
            kernel_size=1,
            norm_layer=nn.BatchNorm2d,
            activation_layer=nn.ReLU6,
        )
        model.classifier[-1] = nn.Linear(cfg.last_channel, num_classes)
        model.last_channel = cfg.last_channel
    if isinstance(model, Resizing):
        assert cfg.input_size is not None
        model.input_size = cfg.input_size
    return model


class Resizing(mobilenetv2.MobileNetV2):
    """MobileNetV2 that first resizes its input to `input_size` (bilinear; exported as an ONNX
    Resize, so the deployed file takes the data's resolution and its latency includes it)."""

    input_size: int

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            size = (self.input_size, self.input_size)
            x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return super()._forward_impl(x)


def widen_depthwise(block: nn.Module, kernel: int) -> None:
    """Give an inverted residual block a k×k depthwise conv (torchvision's is fixed at 3×3)."""
    layers: nn.Sequential = block.conv  # type: ignore[assignment]  # [expand]?, dw, project, bn
    index = 0 if len(layers) == 3 else 1
    depthwise: nn.Conv2d = layers[index][0]  # type: ignore[index]
    layers[index] = Conv2dNormActivation(
        depthwise.in_channels,
        depthwise.out_channels,
        kernel_size=kernel,
        stride=depthwise.stride[0],
        groups=depthwise.groups,
        norm_layer=nn.BatchNorm2d,
        activation_layer=nn.ReLU6,
    )


def v3_block(block: nn.Module, se: bool, activation: str) -> None:
    """MobileNetV3's additions to an inverted residual (Howard et al. 2019, torchvision's
    `mobilenetv3.InvertedResidual`): squeeze-and-excitation after the depthwise conv, to a
    quarter of its channels (multiple of 8) with a hard-sigmoid gate, and hardswish in place of
    the block's ReLU6."""
    layers: nn.Sequential = block.conv  # type: ignore[assignment]  # [expand]?, dw, project, bn
    if activation == "hardswish":
        for layer in layers:
            if isinstance(layer, Conv2dNormActivation) and isinstance(layer[-1], nn.ReLU6):
                layer[-1] = nn.Hardswish()
    if se:
        index = 0 if len(layers) == 3 else 1
        hidden = layers[index][0].out_channels  # type: ignore[index]
        squeeze = SqueezeExcitation(
            hidden, _make_divisible(hidden // 4, 8), scale_activation=nn.Hardsigmoid
        )
        block.conv = nn.Sequential(*layers[: index + 1], squeeze, *layers[index + 1 :])


@MODELS.register("tiny_cnn")
def tiny_cnn(cfg: specs.TinyCNNConfig, in_channels: int, num_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    channels = in_channels
    for i, width in enumerate(cfg.widths):
        layers += [
            nn.Conv2d(channels, width, 3, 2 if i else 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        channels = width
    return Layers(
        nn.Sequential(*layers),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)),
    )


def count_params(model: nn.Module) -> int:
    """Weights of the network itself; quantizer scales added by NNCF are not counted."""
    return sum(p.numel() for name, p in model.named_parameters() if "__nncf" not in name)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of `example` (conv and linear layers)."""
    total = 0

    def hook(module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = (
                module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            )
            total += output.numel() // output.shape[0] * kernel
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
