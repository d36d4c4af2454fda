"""Torch-side helpers the training stages share: device, data, teacher, evaluation, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.artifacts import Artifact, sha256_json
from edgekd.config.loader import validate
from edgekd.config.schema import AugmentConfig, CalibrationConfig, TrainConfig
from edgekd.data.datasets import ImageSet, Splits, load_splits, sample
from edgekd.distill.distiller import Distiller
from edgekd.distill.teacher import Teacher, cache_logits
from edgekd.distill.trainer import evaluate, fit
from edgekd.models import zoo
from edgekd.models.io import file_bytes, load_model, save_model
from edgekd.models.specs import ModelSpec
from edgekd.pipeline import Plan
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
    return Distiller(plan.losses)


def teacher(ctx: StageContext, splits: Splits, device: torch.device) -> Teacher:
    """The frozen teacher, with cached logits when the augmentation allows it."""
    plan = ctx.plan
    model, _ = load_model(ctx.input_path("teacher"))
    cached = None
    if plan.config.distill.cache_teacher_logits and plan.config.data.augment.crop_pad == 0:
        tag = sha256_json(
            [
                ctx.inputs["teacher"].sha256,
                plan.config.data.model_dump(mode="json"),
                plan.config.seed,
            ]
        )[:16]
        path = ctx.run_dir / "cache" / f"teacher-logits-{tag}.safetensors"
        if not path.exists():
            ctx.log(
                f"caching the teacher's logits for {len(splits.train)} images and their "
                "mirror images"
            )
        cached = cache_logits(model, splits.train, splits, device, path)
    return Teacher(model, device, cached)


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


def checkpoint(ctx: StageContext) -> Path:
    return ctx.dir / "checkpoint.pt"


def train(
    ctx: StageContext,
    model: nn.Module,
    cfg: TrainConfig,
    splits: Splits,
    device: torch.device,
    desc: str,
    distill: Distiller | None = None,
    augment: AugmentConfig | None = None,
) -> None:
    """Train `model` with the pipeline's KD loss (or `distill`), resumable from this stage's
    checkpoint; the per-epoch history goes into the stage's metrics. The teacher is loaded only
    when a loss term needs it."""
    if distill is None:
        distill = distiller(ctx.plan)
    teacher_model = teacher(ctx, splits, device) if distill.needs_teacher else None
    ctx.metrics["history"] = fit(
        model,
        splits.train,
        splits,
        cfg,
        distill,
        teacher=teacher_model,
        augment=augment or ctx.plan.config.data.augment,
        device=device,
        seed=ctx.plan.config.seed,
        checkpoint=checkpoint(ctx),
        key=ctx.key,
        val=splits.val,
        console=ctx.console,
        desc=desc,
    )
