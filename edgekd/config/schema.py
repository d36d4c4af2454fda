"""Pydantic models for pipelines, targets and calibration sets (no torch import here)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgekd.config.loader import Loc


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IsPath:
    """Marks a config string as a file or folder path: stage keys hash what it names (the file's
    bytes; a folder's file names, sizes and mtimes), so editing the file reruns the stage."""


PathStr = Annotated[str, IsPath()]


def _marked(annotation: Any, metadata: list[Any]) -> bool:
    if any(isinstance(m, IsPath) for m in metadata):
        return True
    return any(
        isinstance(a, IsPath) or (a is not None and _marked(a, []))
        for a in get_args(annotation)
        if not isinstance(a, type) or a is not type(None)
    )


def path_values(model: BaseModel, loc: Loc = ()) -> Iterator[tuple[Loc, str]]:
    """Every path-marked value in `model` and the models it holds, with its place."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        marked = _marked(info.annotation, info.metadata)
        for i, item in items:
            where: Loc = (*loc, name) if i is None else (*loc, name, i)
            if isinstance(item, BaseModel):
                yield from path_values(item, where)
            elif marked and isinstance(item, str):
                yield where, item


def default(model: type[BaseModel], name: str, value: Any) -> Any:
    """`model`'s field `name` with another default, its type, bounds and description kept: for
    a stage's own training defaults, shown by `edgekd validate --show`."""
    info = copy.copy(model.model_fields[name])
    info.default = value
    return info


class Normalization(Strict):
    """What the model does to pixels scaled to [0, 1]: x = (pixel / 255 - mean) / std."""

    mean: list[float] = Field(min_length=1, description="Per-channel mean.")
    std: list[float] = Field(min_length=1, description="Per-channel standard deviation.")

    @model_validator(mode="after")
    def _same_channels(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"{len(self.mean)} means but {len(self.std)} stds")
        if min(self.std) <= 0:
            raise ValueError("std must be > 0")
        return self


class AugmentConfig(Strict):
    hflip: bool = Field(
        True,
        description="Random horizontal flips (the teacher's logits for both "
        "views can be cached, so KD stays cheap).",
    )
    crop_pad: int = Field(
        0,
        ge=0,
        description="Random crop after zero-padding by this many pixels; "
        "0 disables it. Forces a live teacher when > 0.",
    )
    random_resized_crop: tuple[float, float] | None = Field(
        None,
        description="Inception-style random resized crop: [min, max] share of the image's "
        "area (ImageNet training uses [0.08, 1.0]; aspect 3/4 to 4/3), then resized to "
        "data.image_size. Streamed data crops the full-size file, in-memory data its "
        "stored image. Forces a live teacher.",
    )

    @model_validator(mode="after")
    def _crop_range(self) -> AugmentConfig:
        if self.random_resized_crop is not None:
            low, high = self.random_resized_crop
            if not 0 < low <= high <= 1:
                raise ValueError(
                    f"random_resized_crop [{low}, {high}]: need 0 < min <= max <= 1 "
                    "(shares of the image's area)"
                )
        return self

    @property
    def live_teacher(self) -> bool:
        """Whether each augmented image is new (so no cached teacher output fits it)."""
        return self.crop_pad > 0 or self.random_resized_crop is not None


class DataConfig(Strict):
    dataset: Literal["fashion-mnist", "imagefolder"] = Field(
        "fashion-mnist",
        description="Built-in data set, or an ImageFolder tree (root/train, "
        "root/val, optional root/test; one sub-folder per class).",
    )
    root: PathStr | None = Field(
        None,
        description="Where the data lies. Fashion-MNIST: a folder with "
        "the idx files; searched after it: $EDGEKD_DATA, "
        "/usr/share/datasets/fashion-mnist, torchvision's layout.",
    )
    download: bool = Field(
        False,
        description="Fashion-MNIST only: download through torchvision "
        "when not found locally (needs network).",
    )
    image_size: int | None = Field(
        None,
        gt=0,
        description="ImageFolder: resize images to this square size. Fashion-MNIST is 28.",
    )
    grayscale: bool = Field(False, description="ImageFolder: convert images to one channel.")
    val_size: int = Field(
        5000,
        ge=0,
        description="Images held out of the training split for "
        "model selection (Fashion-MNIST; ImageFolder uses root/val).",
    )
    split_seed: int | None = Field(
        None,
        ge=0,
        description="Seed of the validation hold-out and the train/test subsets; null: the "
        "pipeline's seed. Fix it to compare training seeds on one split (and to train extra "
        "teachers that never saw the student's validation images).",
    )
    train_subset: int | None = Field(
        None,
        gt=0,
        description="Train on only this many images (a seeded random subset); null uses them all.",
    )
    test_subset: int | None = Field(
        None,
        gt=0,
        description="Evaluate on only this many test images; null uses the whole test split.",
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Training-time augmentation of the student."
    )
    resize: Literal["squash", "center_crop"] = Field(
        "squash",
        description="ImageFolder: how a file becomes image_size × image_size. squash resizes "
        "the whole image (aspect ratio not kept); center_crop resizes its shorter side to "
        "image_size / crop_fraction and cuts the centre (ImageNet's evaluation transform).",
    )
    crop_fraction: float = Field(
        0.875, gt=0, le=1, description="center_crop: image_size over the resized shorter side."
    )
    storage: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="ImageFolder: hold the decoded images in memory, or read them from disk "
        "batch by batch through DataLoader workers (stream). auto streams when the decoded "
        "splits would exceed memory_limit_mb. Fashion-MNIST is always in memory.",
    )
    memory_limit_mb: int = Field(
        2048, gt=0, description="storage auto: the decoded size above which data is streamed."
    )
    workers: int | None = Field(
        None,
        ge=0,
        description="Streamed data: DataLoader worker processes decoding images (null: one per "
        "CPU core, at most 8; 0 decodes in the training process).",
    )

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str, info: ValidationInfo) -> str:
        if value == "stream" and info.data.get("dataset") == "fashion-mnist":
            raise ValueError(
                "stream reads an ImageFolder from disk; Fashion-MNIST (47 MB) is always held "
                "in memory. Remove storage or set dataset: imagefolder"
            )
        return value


class LossTerm(Strict):
    """One weighted term of the distillation loss; extra keys belong to the loss's own config."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="Registered loss name (ce, kd, ...).")
    weight: float = Field(1.0, ge=0, description="Multiplier of this term in the summed loss.")


class ExtraTeacher(Strict):
    """A further teacher: edgekd weights with an architecture, or an ONNX file."""

    model: dict[str, object] | None = Field(
        None, description="Architecture (`arch` + settings), with `weights`."
    )
    weights: PathStr | None = Field(
        None, description="Trained weights (.safetensors or state_dict)."
    )
    onnx: PathStr | None = Field(None, description="An .onnx teacher run through onnxruntime.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Label smoothing this teacher was trained with, if any."
    )
    normalize: Normalization | None = Field(
        None,
        description="The teacher's input normalisation; null: from the model.json beside its "
        "file, else the training split's statistics (with a warning).",
    )


class UnlabeledConfig(Strict):
    source: PathStr = Field(
        description="`train_rest`: the training images left out by data.train_subset, without "
        "their labels; or a folder of images (searched recursively)."
    )
    limit: int | None = Field(None, gt=0, description="Use at most this many images.")


class DistillConfig(Strict):
    losses: list[LossTerm] = Field(
        default_factory=lambda: [
            LossTerm(name="ce", weight=0.1),
            LossTerm(name="kd", weight=0.9, temperature=4.0),
        ],
        description="Named, weighted loss terms summed by the distiller.",
    )
    cache_teacher_logits: bool = Field(
        True,
        description="Compute the teacher's logits for every "
        "training image (and its flip) once and reuse them (logit losses only).",
    )
    scheme: str | dict[str, object] = Field(
        "offline",
        description="How students and teachers are arranged: a scheme name (offline: frozen "
        "teacher(s); dml: mutual learning of peers; byot: self-distillation from the deepest "
        "exit to shallow ones), or `{name: ..., its settings}`.",
    )
    teachers: list[ExtraTeacher] = Field(
        default_factory=list,
        description="Teachers beside the teacher stage's (which is teacher 0).",
    )
    multi_teacher: Literal["average", "random", "split"] = Field(
        "average",
        description="average: each teacher-reading term is the weighted mean over teachers "
        "(for KD this is KD to the averaged soft targets); random: one teacher per batch; "
        "split: teacher 0 gives response knowledge, teacher 1 feature/relation knowledge.",
    )
    teacher_weights: list[float] | None = Field(
        None, description="Weights of the teachers in `average` mode (normalised to sum 1)."
    )
    unlabeled: UnlabeledConfig | None = Field(
        None, description="Extra images without labels, labelled by the teacher's soft targets."
    )


Schedule = Literal["onecycle", "cosine", "constant"]


class TrainConfig(Strict):
    epochs: float = Field(1, gt=0, description="Passes over the training split; fractions allowed.")
    batch_size: int = Field(128, gt=0, description="Training batch size.")
    lr: float = Field(0.05, gt=0, description="Peak learning rate (SGD with Nesterov momentum).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay (not on norms/biases).")
    schedule: Schedule = Field("onecycle", description="Learning-rate schedule over all steps.")
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off",
        description="Automatic mixed precision of the forward passes (student, live teacher, "
        "loss): bf16 on a CPU or GPU, fp16 on a GPU with gradient scaling; weights stay FP32. "
        "A model under QAT trains in FP32 whatever this says.",
    )
    compile: bool = Field(
        False,
        description="Train through torch.compile (inductor). Not used for a model under NNCF's "
        "QAT or when a loss reads the student's features (hooks); off by default until it is "
        "measured faster (docs/benchmarks/scaling.md).",
    )


class CalibrationConfig(Strict):
    name: str = Field(description="Name shown in reports.")
    dataset: str = Field(description="Must match the pipeline's data.dataset.")
    split: Literal["train", "val"] = Field(
        "train",
        description="Split to draw from; never test, "
        "so that reported test accuracy stays unbiased.",
    )
    size: int = Field(512, gt=0, description="Number of images.")
    seed: int = Field(0, description="Seed of the random draw.")
    batch_size: int = Field(64, gt=0, description="Batch size fed to the calibrator.")
    preprocessing: Literal["eval"] = Field(
        "eval", description="Evaluation preprocessing (normalisation, no augmentation)."
    )


def _known_runner(name: str) -> str:
    """A runner name is written once, where the runner registers; a profile must use one."""
    from edgekd.errors import UnknownNameError
    from edgekd.runners.base import RUNNERS

    try:
        RUNNERS.get(name)
    except UnknownNameError as exc:  # a ValueError is what pydantic reports with its place
        raise ValueError(str(exc)) from None
    return name


class Peak(Strict):
    int8_tops: float | None = Field(None, gt=0, description="Dense INT8 TOPS (data sheet).")
    fp16_tflops: float | None = Field(None, gt=0, description="FP16 TFLOPS (data sheet).")
    mem_gbps: float | None = Field(None, gt=0, description="Memory bandwidth, GB/s (data sheet).")

    @property
    def roofline_ready(self) -> bool:
        """Whether the figures a roofline needs are given: compute (INT8 or FP16) and memory."""
        return self.mem_gbps is not None and (
            self.int8_tops is not None or self.fp16_tflops is not None
        )


class Connection(Strict):
    host: str | None = Field(None, description="SSH host name or address; null = not configured.")
    port: int = Field(22, gt=0, lt=65536, description="SSH port.")
    user: str | None = Field(None, description="SSH user.")
    key_file: str | None = Field(None, description="Private key for key authentication.")
    known_hosts: str | None = Field(
        None, description="known_hosts file the host key is checked against (no blind accept)."
    )
    workdir: str = Field(
        "/tmp/edgekd",
        pattern=r"^/[A-Za-z0-9_./-]*$",
        description="Absolute remote working directory (letters, digits, _ . / - only).",
    )
    connect_timeout_s: int = Field(10, gt=0, description="SSH connection timeout, seconds.")
    python: str = Field(
        "python3",
        description="Python with edgekd installed on the device (for runtimes but tensorrt).",
    )
    trtexec: str = Field(
        "/usr/src/tensorrt/bin/trtexec", description="trtexec on the device (JetPack's path)."
    )


class Power(Strict):
    nvpmodel: int | None = Field(None, description="nvpmodel mode applied before measuring.")
    jetson_clocks: bool = Field(False, description="Run jetson_clocks before measuring.")
    tegrastats: bool = Field(False, description="Sample tegrastats (power rails) while timing.")


class TargetProfile(Strict):
    name: str = Field(description="Profile name used in reports.")
    description: str = Field("", description="One line for people.")
    kind: Literal["local-cpu", "local-gpu", "remote-ssh"] = Field(description="Where it runs.")
    runtimes: list[Annotated[str, AfterValidator(_known_runner)]] = Field(
        min_length=1, description="Runners allowed on this target (edgekd/runners/backends/)."
    )
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(description="Precisions allowed.")
    threads: int | None = Field(None, gt=0, description="CPU threads; null = all cores.")
    peak: Peak = Field(default_factory=Peak, description="Peak figures for latency prediction.")
    connection: Connection | None = Field(None, description="Remote devices only.")
    power: Power | None = Field(
        None, description="Remote Jetson power set-up, applied only when given."
    )
    dla_cores: int = Field(
        0,
        ge=0,
        description="NVDLA cores on the module (data sheet); 0: none. With cores, TensorRT "
        "(trtexec) also builds DLA engines, each a row beside the GPU row (`dla_rows`).",
    )
    dla_rows: Literal["first", "each", "none"] = Field(
        "first",
        description="DLA rows: first = one on core 0 (trtexec --useDLACore=0; the cores are "
        "identical), each = one per core, none = GPU rows only.",
    )
    dla_gpu_fallback: bool = Field(
        True,
        description="Layers DLA cannot run go to the GPU (trtexec --allowGPUFallback); false: "
        "a model with such a layer fails to build for DLA.",
    )


class GateConfig(Strict):
    """`gate:`: the limits `edgekd check` applies to this pipeline's report (command-line flags
    override them). The baseline tolerances default to 0.5 points, 10 % and 5 % when a baseline
    is given and they are not set."""

    min_acc: float | None = Field(None, description="Least final test accuracy, %.")
    max_acc_drop: float | None = Field(None, description="Most teacher − final, points.")
    max_params: int | None = Field(None, gt=0, description="Most final parameters.")
    max_bytes_ratio: float | None = Field(None, gt=0, description="Most final/teacher bytes.")
    max_latency_ms: float | None = Field(
        None, gt=0, description="Most final median latency, ms (absolute: machine-dependent)."
    )
    min_parity_top1: float | None = Field(
        None, ge=0, le=100, description="Least final ONNX vs PyTorch top-1 agreement, %."
    )
    max_parity_diff: float | None = Field(
        None, ge=0, description="Most final ONNX vs PyTorch max |logit difference|."
    )
    max_acc_regression: float | None = Field(
        None, ge=0, description="Most accuracy lost against the baseline, points."
    )
    max_latency_regression: float | None = Field(
        None,
        ge=0,
        description="Most growth of the final/teacher latency ratio against the baseline, %, "
        "beyond the measurement noise.",
    )
    max_size_growth: float | None = Field(
        None, ge=0, description="Most growth of the final file's bytes against the baseline, %."
    )


class PipelineConfig(Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run folder name: runs/<name>/."
    )
    seed: int = Field(0, description="Seed for data subsets, initialisation and shuffling.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Training device; auto takes CUDA when available."
    )
    threads: int | None = Field(None, gt=0, description="torch CPU threads; null = all cores.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data set and splits.")
    distill: DistillConfig = Field(
        default_factory=DistillConfig, description="The KD loss used wherever a student is trained."
    )
    targets: list[PathStr] = Field(
        default_factory=list,
        description="Target profile files (targets/*.yaml) measured by the bench stage.",
    )
    stages: list[dict[str, object]] = Field(
        min_length=1,
        description="Stages in run order; each has `stage: NAME` plus that stage's keys.",
    )
    gate: GateConfig | None = Field(
        None, description="Limits for `edgekd check` on this pipeline's report (docs/ci.md)."
    )
