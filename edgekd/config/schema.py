"""Pydantic models for pipelines, targets and calibration sets (no torch import here)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class DataConfig(Strict):
    dataset: Literal["fashion-mnist", "imagefolder"] = Field(
        "fashion-mnist",
        description="Built-in data set, or an ImageFolder tree (root/train, "
        "root/val, optional root/test; one sub-folder per class).",
    )
    root: str | None = Field(
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
    mean: list[float] | None = Field(
        None,
        description="Per-channel normalisation mean; default is computed from the training split.",
    )
    std: list[float] | None = Field(None, description="Per-channel normalisation std.")
    val_size: int = Field(
        5000,
        ge=0,
        description="Images held out of the training split for "
        "model selection (Fashion-MNIST; ImageFolder uses root/val).",
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


class LossTerm(Strict):
    """One weighted term of the distillation loss; extra keys belong to the loss's own config."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="Registered loss name (ce, kd, ...).")
    weight: float = Field(1.0, ge=0, description="Multiplier of this term in the summed loss.")


class DMLConfig(Strict):
    """Zhang et al. 2018, Deep Mutual Learning: peers trained together, each teaching the others."""

    peers: int = Field(2, ge=2, le=8, description="Models trained together, the student included.")
    weight: float = Field(1.0, ge=0, description="Weight of each peer's mimicry term.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of the mimicry KL.")


class BYOTConfig(Strict):
    """Zhang et al. 2019, Be Your Own Teacher: shallow exits learn from the deepest classifier."""

    exits: list[str] = Field(
        min_length=1, description="Dotted module paths in the student where exit heads attach."
    )
    alpha: float = Field(0.3, ge=0, le=1, description="KD share of each exit's loss (paper α).")
    temperature: float = Field(3.0, gt=0, description="Temperature of the exits' KD term.")
    feature_weight: float = Field(
        0.03, ge=0, description="λ: weight of the L2 hint from each exit to the deepest features."
    )


class ExtraTeacher(Strict):
    """A further teacher: edgekd weights with an architecture, or an ONNX file."""

    model: dict[str, object] | None = Field(
        None, description="Architecture (`arch` + settings), with `weights`."
    )
    weights: str | None = Field(None, description="Trained weights (.safetensors or state_dict).")
    onnx: str | None = Field(None, description="An .onnx teacher run through onnxruntime.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="Label smoothing this teacher was trained with, if any."
    )


class UnlabeledConfig(Strict):
    source: str = Field(
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
    scheme: Literal["offline", "dml", "byot"] = Field(
        "offline",
        description="offline: frozen teacher(s); dml: mutual learning of peers; byot: "
        "self-distillation from the deepest exit to shallow ones.",
    )
    dml: DMLConfig = Field(default_factory=DMLConfig, description="Settings of scheme dml.")
    byot: BYOTConfig | None = Field(None, description="Settings of scheme byot.")
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


class TrainConfig(Strict):
    epochs: float = Field(1, gt=0, description="Passes over the training split; fractions allowed.")
    batch_size: int = Field(128, gt=0, description="Training batch size.")
    lr: float = Field(0.05, gt=0, description="Peak learning rate (SGD with Nesterov momentum).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay (not on norms/biases).")
    schedule: Literal["onecycle", "cosine", "constant"] = Field(
        "onecycle", description="Learning-rate schedule over all steps."
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


class Peak(Strict):
    int8_tops: float | None = Field(None, gt=0, description="Dense INT8 TOPS (data sheet).")
    fp16_tflops: float | None = Field(None, gt=0, description="FP16 TFLOPS (data sheet).")
    mem_gbps: float | None = Field(None, gt=0, description="Memory bandwidth, GB/s (data sheet).")


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
    runtimes: list[Literal["onnxruntime", "onnxruntime-trt", "openvino", "tensorrt", "torch"]] = (
        Field(description="Runtimes allowed on this target, in order of preference.")
    )
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(description="Precisions allowed.")
    threads: int | None = Field(None, gt=0, description="CPU threads; null = all cores.")
    peak: Peak = Field(default_factory=Peak, description="Peak figures for latency prediction.")
    connection: Connection | None = Field(None, description="Remote devices only.")
    power: Power | None = Field(
        None, description="Remote Jetson power set-up, applied only when given."
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
    targets: list[str] = Field(
        default_factory=list,
        description="Target profile files (targets/*.yaml) measured by the bench stage.",
    )
    stages: list[dict[str, object]] = Field(
        min_length=1,
        description="Stages in run order; each has `stage: NAME` plus that stage's keys.",
    )
