"""Torch-side helpers the training stages share: device, data and each model's normalisation,
teachers, evaluation, saving, and the resumable training call."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.artifacts import Artifact, content_digest, read_json, sha256_json, sha256_path
from edgekd.config.loader import validate
from edgekd.config.schema import (
    AugmentConfig,
    CalibrationConfig,
    ExtraTeacher,
    Normalization,
    TrainConfig,
)
from edgekd.data.datasets import (
    ImageSet,
    Splits,
    load_splits,
    model_to_device,
    normalize,
    renormalizer,
    sample,
)
from edgekd.distill.distiller import Distiller, DistillSetupError
from edgekd.distill.scheme import SCHEMES
from edgekd.distill.teacher import LogitsFn, Teacher, cache_logits, onnx_logits_fn
from edgekd.distill.terms import build
from edgekd.distill.trainer import evaluate, fit
from edgekd.errors import EdgeKDError
from edgekd.models import zoo
from edgekd.models.io import (
    META,
    WEIGHTS,
    file_bytes,
    load_model,
    load_state,
    read_weights,
    save_model,
)
from edgekd.models.specs import ModelSpec
from edgekd.plan import Plan
from edgekd.stage import StageContext


def prepare(plan: Plan) -> tuple[torch.device, Splits]:
    """Seed, thread count, device and data for a stage; the splits are normalised with the
    training split's statistics (see `normalized`, `for_model`)."""
    cfg = plan.config
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    root = str(plan.resolve(cfg.data.root)) if cfg.data.root else None
    return torch.device("cuda" if use_cuda else "cpu"), load_splits(cfg.data, cfg.seed, root)


def normalized(splits: Splits, setting: Normalization | None) -> Splits:
    """The splits normalised as a model's `normalize:` setting says (None: the training
    split's statistics)."""
    return splits if setting is None else splits.normalized_by(setting.mean, setting.std)


def for_model(splits: Splits, meta: dict[str, Any]) -> Splits:
    """The splits normalised as the saved model `meta` (its model.json) was trained."""
    pre = meta.get("preprocessing") or {}
    if "mean" not in pre or "std" not in pre:
        return splits
    return splits.normalized_by(pre["mean"], pre["std"])


def sidecar(path: Path) -> Path | None:
    """The model.json that describes a weights or ONNX file: `X.json` beside `X.safetensors`
    (or `X.onnx`), or the `model.json` of the edgekd model folder `X` is the weights of."""
    candidates = [path.with_suffix(".json")]
    if path.name == WEIGHTS:
        candidates.append(path.parent / META)
    return next((c for c in candidates if c != path and c.is_file()), None)


def teacher_normalization(
    setting: Normalization | None, file: Path | None, splits: Splits, who: str
) -> tuple[Splits, str, bool]:
    """The splits normalised as a given teacher expects, where that normalisation came from,
    and whether it is a guess: the YAML's `normalize:`, else the model.json beside the
    teacher's file, else the training split's statistics (a guess, said so)."""
    if setting is not None:
        return normalized(splits, setting), "the YAML's normalize:", False
    meta = sidecar(file) if file is not None else None
    if meta is not None:
        pre = read_json(meta).get("preprocessing") or {}
        if "mean" in pre and "std" in pre:
            try:
                return splits.normalized_by(pre["mean"], pre["std"]), str(meta), False
            except ValueError as exc:
                raise EdgeKDError(
                    f"{meta}: preprocessing does not fit the data ({exc}); fix the file or set "
                    "`normalize:` in the YAML"
                ) from None
    return (
        splits,
        (
            f"the training split's statistics: no normalize: in the YAML and no model.json beside "
            f"{file}. If {who} was trained with other statistics (ImageNet's, say), set "
            "`normalize: {mean: [...], std: [...]}`"
        ),
        True,
    )


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
    scheme = build(SCHEMES.get(plan.scheme), plan.scheme_cfg)
    return Distiller(plan.losses, scheme, cfg.multi_teacher, cfg.teacher_weights)


def _load_teacher(path: Path) -> tuple[nn.Module | None, LogitsFn | None, dict[str, Any]]:
    """A teacher folder written by the teacher stage: PyTorch weights, or an ONNX file."""
    meta = read_json(path / "model.json")
    if meta.get("format") == "onnx":
        return None, onnx_logits_fn(path / "model.onnx"), meta
    model, meta = load_model(path)
    return model, None, meta


def onnx_predict(
    path: Path, images: torch.Tensor | Iterable[torch.Tensor], batch_size: int = 256
) -> torch.Tensor:
    """Logits of normalised `images` (a tensor, or its batches in order) from an ONNX model."""
    run = onnx_logits_fn(path)
    if isinstance(images, torch.Tensor):
        images = images.split(batch_size)
    return torch.cat([run(b) for b in images])


def _extra_teacher(
    ctx: StageContext, spec: ExtraTeacher, splits: Splits
) -> tuple[nn.Module | None, LogitsFn | None, str, Splits]:
    plan = ctx.plan
    path = plan.resolve(spec.onnx or spec.weights or "")
    own, source, guessed = teacher_normalization(spec.normalize, path, splits, "this teacher")
    if guessed:
        ctx.log(f"warning: {path.name}: normalising its inputs with {source}")
    if spec.onnx is not None:
        return None, onnx_logits_fn(path), sha256_path(path), own
    assert spec.model is not None
    model = build_model(ModelSpec.model_validate(spec.model), splits)
    load_state(model, read_weights(path), str(path))
    return model, None, sha256_json([sha256_path(path), spec.model]), own


def teachers(
    ctx: StageContext, splits: Splits, device: torch.device, distill: Distiller, train: ImageSet
) -> list[Teacher]:
    """Teacher 0 (the teacher stage's, or `ctx.teacher_override`) and `distill.teachers`, each
    fed in its own normalisation (`splits` is the student's), with cached logits when no loss
    reads its features and the augmentation allows it."""
    plan = ctx.plan
    cfg = plan.config.distill
    first = ctx.teacher_override or ctx.input_path("teacher")
    model, fn, meta = _load_teacher(first)
    sources = [(model, fn, sha256_path(first), for_model(splits, meta))]
    smoothing = [float(meta.get("label_smoothing", 0.0))]
    for spec in cfg.teachers:
        sources.append(_extra_teacher(ctx, spec, splits))
        smoothing.append(spec.label_smoothing)
    distill.num_teachers = len(sources)
    # What the cached logits depend on besides the teacher and its normalisation.
    unlabeled = cfg.unlabeled
    data_key = [
        content_digest(plan.resolve(unlabeled.source))
        if unlabeled and unlabeled.source != "train_rest"
        else None,
        plan.config.data.model_dump(mode="json"),
        plan.config.seed,
        len(train),
        unlabeled.model_dump() if unlabeled else None,
    ]
    out = []
    for i, (t_model, t_fn, digest, own) in enumerate(sources):
        reads_features = bool(distill.teacher_keys(i))
        cached = None
        if (
            cfg.cache_teacher_logits
            and not plan.config.data.augment.live_teacher
            and not reads_features
        ):
            key = sha256_json([digest, *data_key, [list(own.mean), list(own.std)]])
            path = ctx.run_dir / "cache" / f"teacher{i}-logits-{key[:16]}.npy"
            if not path.exists():
                ctx.log(
                    f"caching teacher {i}'s logits for {len(train)} images and their mirror images"
                )
            cached = cache_logits(
                t_model if t_model is not None else t_fn, train, own, device, path, key, log=ctx.log
            )
        inputs = renormalizer(splits, own)
        out.append(Teacher(t_model, device, cached, t_fn, name=f"teacher {i}", inputs=inputs))
        if smoothing[i] > 0 and any(t.reads == "response" for t in distill.teacher_terms(i)):
            ctx.log(
                f"warning: teacher {i} was trained with label smoothing {smoothing[i]}; it "
                "flattens the teacher's soft targets and erases much of the dark knowledge KD "
                "transfers (Müller et al. 2019, 'When does label smoothing help?')"
            )
    return out


def training_set(plan: Plan, splits: Splits) -> ImageSet:
    """The training split, plus the unlabeled images of `distill.unlabeled` (label -1): kept
    on disk when the training split is streamed, decoded into memory when it is not."""
    cfg = plan.config.distill.unlabeled
    if cfg is None:
        return splits.train
    if cfg.source == "train_rest":
        if splits.rest is None:
            raise plan.doc.error(
                ("distill", "unlabeled", "source"),
                "train_rest needs data.train_subset smaller than the training split",
            )
        extra = splits.rest
        if cfg.limit is not None:
            extra = extra.subset(torch.arange(min(cfg.limit, len(extra))))
        images = extra.images
    else:
        from edgekd.data.imagefolder import Decode, unlabeled_files
        from edgekd.data.stream import FileImages

        data = plan.config.data
        c, h, _ = splits.input_shape
        decode = Decode(h, c == 1, data.resize, data.crop_fraction)
        files = FileImages(unlabeled_files(plan.resolve(cfg.source), cfg.limit), decode)
        own = splits.train.images
        images = replace(files, workers=own.workers) if isinstance(own, FileImages) else files[:]
    labels = torch.full((len(images),), -1, dtype=splits.train.labels.dtype)
    return splits.train.concat(ImageSet(images, labels))


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
            f"{prefix}test_acc": round(evaluate(model, splits.test, splits, device, shard=True), 2),
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
