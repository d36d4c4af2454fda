"""Torch-side helpers the training stages share: device, data, teacher, evaluation, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.artifacts import Artifact, read_json, sha256_json, sha256_path
from edgekd.config.loader import validate
from edgekd.config.schema import AugmentConfig, CalibrationConfig, ExtraTeacher, TrainConfig
from edgekd.data.datasets import (
    ImageSet,
    Splits,
    load_splits,
    model_to_device,
    normalize,
    sample,
)
from edgekd.distill.distiller import Distiller, DistillSetupError, Scheme
from edgekd.distill.teacher import LogitsFn, Teacher, cache_logits
from edgekd.distill.trainer import evaluate, fit
from edgekd.models import zoo
from edgekd.models.io import file_bytes, load_model, load_state, read_weights, save_model
from edgekd.models.specs import ModelSpec
from edgekd.pipeline import Plan, unlabeled_digest
from edgekd.stages.base import StageContext


def prepare(plan: Plan) -> tuple[torch.device, Splits]:
    """Seed, thread count, device and data for a stage."""
    cfg = plan.config
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    root = str(plan.resolve(cfg.data.root)) if cfg.data.root else None
    return torch.device("cuda" if use_cuda else "cpu"), load_splits(cfg.data, cfg.seed, root)


def build_model(spec: ModelSpec, splits: Splits) -> nn.Module:
    return zoo.build(spec, splits.input_shape[0], len(splits.classes))


def model_meta(spec: ModelSpec, splits: Splits, **extra: Any) -> dict[str, Any]:
    return {
        "spec": spec.model_dump(mode="json"),
        "in_channels": splits.input_shape[0],
        "num_classes": len(splits.classes),
        "input_shape": list(splits.input_shape),
        "classes": splits.classes,
        "preprocessing": splits.preprocessing(),
        **extra,
    }


def load_input_model(ctx: StageContext, name: str) -> tuple[nn.Module, dict[str, Any]]:
    return load_model(ctx.input_path(name))


def distiller(plan: Plan) -> Distiller:
    cfg = plan.config.distill
    scheme = Scheme(
        name=cfg.scheme,
        dml=cfg.dml,
        byot=cfg.byot if cfg.scheme == "byot" else None,
        multi_teacher=cfg.multi_teacher,
        teacher_weights=cfg.teacher_weights,
    )
    return Distiller(plan.losses, scheme)


def _load_teacher(path: Path) -> tuple[nn.Module | None, LogitsFn | None, dict[str, Any]]:
    """A teacher folder written by the teacher stage: PyTorch weights, or an ONNX file."""
    meta = read_json(path / "model.json")
    if meta.get("format") == "onnx":
        return None, onnx_logits_fn(path / "model.onnx"), meta
    model, meta = load_model(path)
    return model, None, meta


def onnx_logits_fn(path: Path) -> LogitsFn:
    """An ONNX model run through onnxruntime, as a function on normalised torch batches."""
    from edgekd.runners.onnxruntime import logits_function

    run = logits_function(path)
    return lambda images: torch.from_numpy(run(images.float().cpu().numpy()))


def onnx_predict(path: Path, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of normalised `images` from an ONNX model, in batches."""
    run = onnx_logits_fn(path)
    return torch.cat([run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def _extra_teacher(
    plan: Plan, spec: ExtraTeacher, splits: Splits
) -> tuple[nn.Module | None, LogitsFn | None, str]:
    if spec.onnx is not None:
        path = plan.resolve(spec.onnx)
        return None, onnx_logits_fn(path), sha256_path(path)
    assert spec.model is not None and spec.weights is not None
    model = build_model(ModelSpec.model_validate(spec.model), splits)
    path = plan.resolve(spec.weights)
    load_state(model, read_weights(path), str(path))
    return model, None, sha256_json([sha256_path(path), spec.model])


def teachers(
    ctx: StageContext, splits: Splits, device: torch.device, distill: Distiller, train: ImageSet
) -> list[Teacher]:
    """Teacher 0 (the teacher stage's, or `ctx.teacher_override`) and `distill.teachers`, each
    with cached logits when no loss reads its features and the augmentation allows it."""
    plan = ctx.plan
    cfg = plan.config.distill
    first = ctx.teacher_override or ctx.input_path("teacher")
    model, fn, meta = _load_teacher(first)
    sources = [(model, fn, sha256_path(first))]
    smoothing = [float(meta.get("label_smoothing", 0.0))]
    for spec in cfg.teachers:
        sources.append(_extra_teacher(plan, spec, splits))
        smoothing.append(spec.label_smoothing)
    distill.num_teachers = len(sources)
    # What the cached logits depend on besides the teacher (the unlabeled folder walked once).
    data_key = [
        unlabeled_digest(plan),
        plan.config.data.model_dump(mode="json"),
        plan.config.seed,
        len(train),
        cfg.unlabeled.model_dump() if cfg.unlabeled else None,
    ]
    out = []
    for i, (t_model, t_fn, digest) in enumerate(sources):
        reads_features = bool(distill.teacher_keys(i))
        cached = None
        if (
            cfg.cache_teacher_logits
            and plan.config.data.augment.crop_pad == 0
            and not reads_features
        ):
            tag = sha256_json([digest, *data_key])[:16]
            path = ctx.run_dir / "cache" / f"teacher{i}-logits-{tag}.safetensors"
            if not path.exists():
                ctx.log(
                    f"caching teacher {i}'s logits for {len(train)} images and their mirror images"
                )
            cached = cache_logits(
                t_model if t_model is not None else t_fn, train, splits, device, path
            )
        out.append(Teacher(t_model, device, cached, t_fn, name=f"teacher {i}"))
        if smoothing[i] > 0 and any(t.kind == "response" for t in distill.teacher_terms(i)):
            ctx.log(
                f"warning: teacher {i} was trained with label smoothing {smoothing[i]}; it "
                "flattens the teacher's soft targets and erases much of the dark knowledge KD "
                "transfers (Müller et al. 2019, 'When does label smoothing help?')"
            )
    return out


def training_set(plan: Plan, splits: Splits) -> ImageSet:
    """The training split, plus the unlabeled images of `distill.unlabeled` (label -1)."""
    cfg = plan.config.distill.unlabeled
    if cfg is None:
        return splits.train
    if cfg.source == "train_rest":
        if splits.rest is None:
            raise plan.doc.error(
                ("distill", "unlabeled", "source"),
                "train_rest needs data.train_subset smaller than the training split",
            )
        images = splits.rest.images
    else:
        from edgekd.data.imagefolder import load_unlabeled

        c, h, _ = splits.input_shape
        images = torch.from_numpy(load_unlabeled(plan.resolve(cfg.source), h, c == 1, cfg.limit))
    images = images[: cfg.limit]
    labels = torch.full((len(images),), -1, dtype=splits.train.labels.dtype)
    return ImageSet(
        torch.cat([splits.train.images, images]), torch.cat([splits.train.labels, labels])
    )


def calibration_set(plan: Plan, value: str, splits: Splits) -> tuple[CalibrationConfig, ImageSet]:
    """The calibration images defined by the YAML file `value` (see calibration/)."""
    from edgekd.config.loader import load_yaml

    doc = load_yaml(plan.resolve(value))
    cfg = validate(CalibrationConfig, doc.data, doc)
    split = splits.train if cfg.split == "train" else splits.val
    return cfg, sample(split, cfg.size, cfg.seed)


def save_and_score(
    ctx: StageContext,
    artifact: str,
    model: nn.Module,
    meta: dict[str, Any],
    splits: Splits,
    device: torch.device,
    prefix: str = "",
) -> Artifact:
    """Save `model` as `<stage dir>/<artifact>/` and record test accuracy, size and MACs."""
    directory = ctx.dir / artifact
    save_model(model, directory, meta)
    example = torch.zeros(1, *splits.input_shape, device=device)
    ctx.metrics.update(
        {
            f"{prefix}test_acc": round(evaluate(model, splits.test, splits, device), 2),
            f"{prefix}params": zoo.count_params(model),
            f"{prefix}macs": zoo.count_macs(model, example),
            f"{prefix}bytes": file_bytes(directory / "model.safetensors"),
        }
    )
    return ctx.artifact(artifact, directory, quantized=bool(meta.get("quantization")))


def checkpoint(ctx: StageContext, name: str = "history") -> Path:
    return ctx.dir / ("checkpoint.pt" if name == "history" else f"checkpoint-{name}.pt")


def train(
    ctx: StageContext,
    model: nn.Module,
    cfg: TrainConfig,
    splits: Splits,
    device: torch.device,
    desc: str,
    distill: Distiller | None = None,
    augment: AugmentConfig | None = None,
    fresh: bool = False,
    history_key: str = "history",
) -> None:
    """Train `model` with the pipeline's KD loss (or `distill`), resumable from this stage's
    checkpoint; the per-epoch history goes into the stage's metrics. Teachers are loaded only
    when a loss term needs them. `fresh`: the model is untrained (DML re-initialises peers)."""
    plan = ctx.plan
    if distill is None:
        distill = distiller(plan)
    augment = augment or plan.config.data.augment
    data = training_set(plan, splits) if distill.needs_teacher else splits.train
    teacher_list = teachers(ctx, splits, device, distill, data) if distill.needs_teacher else []
    example = normalize(data.images[:2], splits).to(device)
    model_to_device(model, device)
    try:
        distill.build(
            model,
            [t.model for t in teacher_list],
            example,
            len(splits.classes),
            len(data),
            fresh_student=fresh,
            hflip=augment.hflip,
            labels=data.labels,
        )
    except DistillSetupError as exc:
        raise plan.doc.error(("distill", *exc.loc), str(exc)) from None
    ctx.metrics[history_key] = fit(
        model,
        data,
        splits,
        cfg,
        distill,
        teacher=teacher_list,
        augment=augment,
        device=device,
        seed=plan.config.seed,
        checkpoint=checkpoint(ctx, history_key),
        key=ctx.key,
        val=splits.val,
        console=ctx.console,
        desc=desc,
    )
