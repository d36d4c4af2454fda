"""A candidate's layers, parameters, MACs and bytes, computed from its settings without building
it (torch-free): thousands of candidates are sized in milliseconds, `search --dry-run` imports no
torch, and the lookup-table and roofline predictors work per block from the same list.

The channel arithmetic is torchvision's MobileNetV2 (`_make_divisible` to multiples of 8, a
32-channel stem, `round(inp * t)` hidden channels); `tests/search/test_space.py` checks every
figure against the built model (`count_params`, `count_macs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekd.search.space import Candidate, Student
from edgekd.search.structural import TeacherCandidate

STEM_CHANNELS = 32  # torchvision's MobileNetV2 stem at width 1.0


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision.models._utils._make_divisible: round to a multiple, never below 90 %."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


@dataclass(frozen=True)
class Layer:
    """A conv (groups = cin for depthwise) or the classifier (kernel 0), with its feature maps."""

    cin: int
    cout: int
    kernel: int
    stride: int
    groups: int
    size_in: int
    size_out: int
    batchnorm: bool = True
    bias: bool = False  # squeeze-and-excitation's 1×1 convs have one, and no BatchNorm

    @property
    def macs(self) -> int:
        if self.kernel == 0:
            return self.cin * self.cout
        return self.size_out**2 * self.cout * (self.cin // self.groups) * self.kernel**2

    @property
    def params(self) -> int:
        if self.kernel == 0:
            return self.cin * self.cout + self.cout
        weights = self.cout * (self.cin // self.groups) * self.kernel**2
        return weights + (2 * self.cout if self.batchnorm else 0) + (self.cout if self.bias else 0)

    def bytes(self, weight_bytes: int, activation_bytes: int) -> int:
        """Weights plus the input and output feature maps, as a roofline counts traffic."""
        maps = self.cin * max(self.size_in, 1) ** 2 + self.cout * max(self.size_out, 1) ** 2
        return self.params * weight_bytes + maps * activation_bytes


@dataclass(frozen=True)
class Block:
    """A unit a latency table times once: the stem, one inverted residual, or the head."""

    name: str
    layers: tuple[Layer, ...]
    residual: bool = False
    activation: str = "relu6"

    def key(self) -> str:
        """What sets the block's time: its layers' shapes (two equal keys time the same)."""
        shapes = ",".join(
            f"{x.cin}-{x.cout}-k{x.kernel}s{x.stride}g{x.groups}@{x.size_in}" for x in self.layers
        )
        act = "" if self.activation == "relu6" else f":{self.activation}"
        return f"{self.name.split('.')[0]}:{shapes}{':res' if self.residual else ''}{act}"


def conv_out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * ((kernel - 1) // 2) - kernel) // stride + 1


def blocks(candidate: Student, in_channels: int, num_classes: int) -> list[Block]:
    """The candidate's network as blocks of layers, in execution order."""
    if isinstance(candidate, TeacherCandidate):
        return resnet_blocks(candidate, in_channels, num_classes)
    assert isinstance(candidate, Candidate)
    return mobilenet_blocks(candidate, in_channels, num_classes)


def resnet_blocks(candidate: TeacherCandidate, in_channels: int, num_classes: int) -> list[Block]:
    """edgekd's resnet_small: a 3×3 stride-1 stem, BasicBlocks (two 3×3 convs; the first of a
    later stage has stride 2 and a 1×1 projection), global pooling and the classifier."""
    size = candidate.resolution
    channels = candidate.widths[0]
    result = [Block("stem", (Layer(in_channels, channels, 3, 1, 1, size, size),))]
    for stage, (width, n) in enumerate(zip(candidate.widths, candidate.depths, strict=True)):
        for j in range(n):
            stride = 2 if stage > 0 and j == 0 else 1
            out = conv_out(size, 3, stride)
            layers = [
                Layer(channels, width, 3, stride, 1, size, out),
                Layer(width, width, 3, 1, 1, out, out),
            ]
            if stride != 1 or channels != width:
                layers.append(Layer(channels, width, 1, stride, 1, size, out))
            result.append(Block(f"block{stage}.{j}", tuple(layers), residual=True))
            channels, size = width, out
    classifier = Layer(channels, num_classes, 0, 1, 1, 1, 1, batchnorm=False)
    result.append(Block("head", (classifier,)))
    return result


def mobilenet_blocks(candidate: Candidate, in_channels: int, num_classes: int) -> list[Block]:
    """torchvision's MobileNetV2 with the candidate's settings."""
    space = candidate.space
    size = candidate.resolution
    channels = make_divisible(STEM_CHANNELS * candidate.width)
    out = conv_out(size, 3, space.stem_stride)
    result = [Block("stem", (Layer(in_channels, channels, 3, space.stem_stride, 1, size, out),))]
    size = out
    rows = zip(candidate.blocks(), candidate.v3(), strict=True)
    for stage, ((t, c, n, s, k), (se, activation)) in enumerate(rows):
        width = make_divisible(c * candidate.width)
        for j in range(n):
            stride = s if j == 0 else 1
            hidden = round(channels * t)
            layers = []
            if t != 1:
                layers.append(Layer(channels, hidden, 1, 1, 1, size, size))
            out = conv_out(size, k, stride)
            layers.append(Layer(hidden, hidden, k, stride, hidden, size, out))
            if se:  # global pool, 1×1 squeeze, 1×1 excite, on one pixel
                squeeze = make_divisible(hidden // 4)
                layers.append(Layer(hidden, squeeze, 1, 1, 1, 1, 1, batchnorm=False, bias=True))
                layers.append(Layer(squeeze, hidden, 1, 1, 1, 1, 1, batchnorm=False, bias=True))
            layers.append(Layer(hidden, width, 1, 1, 1, out, out))
            residual = stride == 1 and channels == width
            name = f"block{stage}.{j}"
            result.append(Block(name, tuple(layers), residual, activation))
            channels, size = width, out
    head = Layer(channels, candidate.last_channel, 1, 1, 1, size, size)
    classifier = Layer(candidate.last_channel, num_classes, 0, 1, 1, 1, 1, batchnorm=False)
    result.append(Block("head", (head, classifier)))
    return result


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int
    blocks: int


def cost(candidate: Student, in_channels: int, num_classes: int) -> Cost:
    found = blocks(candidate, in_channels, num_classes)
    layers = [layer for block in found for layer in block.layers]
    return Cost(
        params=sum(x.params for x in layers),
        macs=sum(x.macs for x in layers),
        blocks=len(found),
    )
