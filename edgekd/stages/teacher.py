"""Stage `teacher`: load the user's trained teacher, or train one on the data set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from edgekd.artifacts import Artifact
from edgekd.config.loader import validate
from edgekd.config.schema import (
    AugmentConfig,
    Normalization,
    PathStr,
    Strict,
    TrainConfig,
    default,
)
from edgekd.errors import EdgeKDError
from edgekd.models.specs import MODEL_CONFIGS, ModelSpec
from edgekd.stage import STAGES, Stage, StageContext

if TYPE_CHECKING:
    from edgekd.data.datasets import Splits
    from edgekd.plan import Plan


class TeacherTrain(TrainConfig):
    """The teacher stage's training defaults (used only when `weights` is null)."""

    epochs: float = default(TrainConfig, "epochs", 8)
    lr: float = default(TrainConfig, "lr", 0.2)


class TeacherConfig(Strict):
    model: ModelSpec | None = Field(
        None, description="Architecture of the teacher (`arch` + its settings)."
    )
    weights: PathStr | None = Field(
        None,
        description="Trained weights (.safetensors, or a "
        "state_dict loaded with weights_only=True); null = train here.",
    )
    onnx: PathStr | None = Field(
        None,
        description="A teacher from any framework as an .onnx file (NCHW float input, logits "
        "output), run through onnxruntime; it teaches with logit losses. Replaces `model`.",
    )
    normalize: Normalization | None = Field(
        None,
        description="The teacher's input normalisation. null: from the model.json beside "
        "`weights`/`onnx` (X.json beside X.safetensors), else the training split's statistics "
        "(with a warning); a torchvision ImageNet teacher needs ImageNet's mean and std.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Label smoothing used to train the teacher here, or the one the given "
        "weights were trained with; edgekd warns that it weakens KD when > 0.",
    )
    train: TeacherTrain = Field(
        default_factory=TeacherTrain,
        description="Training settings, used only when `weights` is null.",
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Augmentation for teacher training."
    )


def check_model_spec(
    plan: Plan, index: int, spec: ModelSpec, key: tuple[str, ...] = ("model",)
) -> None:
    """Validate `model:` against its architecture's config, with the YAML line on error."""
    loc: tuple[str | int, ...] = ("stages", index, *key)
    try:
        config = MODEL_CONFIGS.get(spec.arch)
    except Exception as exc:
        raise plan.doc.error((*loc, "arch"), str(exc)) from None
    validate(config, spec.arch_kwargs(), plan.doc, loc)


@STAGES.register("teacher")
class TeacherStage(Stage):
    Config = TeacherConfig
    produces = ("teacher",)
    uses = ("seed", "device", "data")
    distributed = True  # trains on every rank under torchrun

    def check(self, cfg: Any, plan: Plan, index: int) -> None:
        if (cfg.model is None) == (cfg.onnx is None):
            raise plan.doc.error(
                ("stages", index), "a teacher needs either `model:` (PyTorch) or `onnx:` (a file)"
            )
        if cfg.onnx is not None:
            if not plan.resolve(cfg.onnx).exists():
                raise plan.doc.error(
                    ("stages", index, "onnx"), f"ONNX teacher {plan.not_found(cfg.onnx)}"
                )
            return
        check_model_spec(plan, index, cfg.model)
        if cfg.weights is not None and not plan.resolve(cfg.weights).exists():
            raise plan.doc.error(
                ("stages", index, "weights"),
                f"weights file {plan.not_found(cfg.weights)}; set `weights: null` to train a "
                "teacher",
            )

    def reads(self, cfg: Any, plan: Plan) -> dict[str, Path]:
        """Also the model.json beside the teacher's file: it holds its normalisation."""
        from edgekd.training import sidecar

        files = super().reads(cfg, plan)
        for key in ("weights", "onnx"):
            value = getattr(cfg, key)
            meta = sidecar(plan.resolve(value)) if value is not None else None
            if meta is not None:
                files[f"{key} (model.json)"] = meta
        return files

    def run(self, ctx: StageContext, cfg: TeacherConfig) -> dict[str, Artifact]:
        from edgekd import training
        from edgekd.distill.distiller import Distiller
        from edgekd.distill.losses.ce import CEConfig
        from edgekd.models.io import load_state, read_weights

        device, data = training.prepare(ctx.plan)
        given = cfg.onnx or cfg.weights
        if given is not None:
            splits, source, guessed = training.teacher_normalization(
                cfg.normalize, ctx.plan.resolve(given), data, "the teacher"
            )
            ctx.log(f"{'warning: ' if guessed else ''}teacher inputs normalised with {source}")
            ctx.metrics["normalization_from"] = source
        else:
            splits = training.normalized(data, cfg.normalize)
        if cfg.onnx is not None:
            return {"teacher": self._onnx_teacher(ctx, cfg, splits)}
        assert cfg.model is not None
        model = training.build_model(cfg.model, splits)
        if cfg.weights is not None:
            path = ctx.plan.resolve(cfg.weights)
            load_state(model, read_weights(path), str(path))
            ctx.log(f"loaded {path}")
            ctx.metrics["weights"] = str(path)
        else:
            ce_only = Distiller([("ce", 1.0, CEConfig(label_smoothing=cfg.label_smoothing))])
            training.train(
                ctx,
                model,
                cfg.train,
                splits,
                device,
                "teacher",
                distill=ce_only,
                augment=cfg.augment,
            )
        model.to(device)
        meta = training.model_meta(
            cfg.model,
            splits,
            trained_by="edgekd teacher stage" if cfg.weights is None else f"weights {cfg.weights}",
            label_smoothing=cfg.label_smoothing,
        )
        artifact = training.save_and_score(ctx, "teacher", model, meta, splits, device)
        ctx.log(
            f"teacher test accuracy {ctx.metrics['test_acc']:.2f}% on {len(splits.test)} images"
        )
        return {"teacher": artifact}

    def _onnx_teacher(self, ctx: StageContext, cfg: TeacherConfig, splits: Splits) -> Artifact:
        """Copy the ONNX teacher into the run, check it on the test split, record its meta."""
        import shutil

        import onnx

        from edgekd import training
        from edgekd.artifacts import atomic_path
        from edgekd.data.datasets import normalized_batches
        from edgekd.models.io import file_bytes

        assert cfg.onnx is not None
        source = ctx.plan.resolve(cfg.onnx)
        directory = ctx.dir / "teacher"
        graph = onnx.load(str(source), load_external_data=False).graph
        params = sum(int(np.prod(init.dims)) for init in graph.initializer)
        meta = {
            "format": "onnx",
            "source": str(source),
            "in_channels": splits.input_shape[0],
            "num_classes": len(splits.classes),
            "input_shape": list(splits.input_shape),
            "classes": splits.classes,
            "preprocessing": splits.preprocessing(),
            "label_smoothing": cfg.label_smoothing,
            "params": params,
        }
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            shutil.copyfile(source, tmp / "model.onnx")
            (tmp / "model.json").write_text(json.dumps(meta, indent=2))
        logits = training.onnx_predict(
            directory / "model.onnx", normalized_batches(splits.test, splits, 256)
        )
        if logits.ndim != 2 or logits.shape[1] != len(splits.classes):
            raise EdgeKDError(
                f"{source}: the ONNX teacher outputs shape {tuple(logits.shape)}, expected "
                f"N×{len(splits.classes)} logits for the data set's classes"
            )
        accuracy = float((logits.argmax(1) == splits.test.labels).float().mean()) * 100
        ctx.metrics.update(
            test_acc=round(accuracy, 2),
            params=params,
            bytes=file_bytes(directory / "model.onnx"),
            onnx=str(source),
        )
        ctx.log(f"ONNX teacher {source.name}: test accuracy {accuracy:.2f}% (onnxruntime)")
        return ctx.artifact("teacher", directory)
