"""Stage `teacher`: load the user's trained teacher, or train one on the data set."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from edgekd.artifacts import Artifact
from edgekd.config.loader import validate
from edgekd.config.schema import AugmentConfig, Strict, TrainConfig
from edgekd.models.specs import MODEL_CONFIGS, ModelSpec
from edgekd.stages.base import STAGES, Stage, StageContext

if TYPE_CHECKING:
    from edgekd.pipeline import Plan


class TeacherConfig(Strict):
    model: ModelSpec = Field(description="Architecture of the teacher (`arch` + its settings).")
    weights: str | None = Field(
        None,
        description="Trained weights (.safetensors, or a "
        "state_dict loaded with weights_only=True); null = train here.",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=8, lr=0.2, batch_size=128),
        description="Training settings, used only when `weights` is null.",
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Augmentation for teacher training."
    )


def check_model_spec(plan: Plan, index: int, spec: ModelSpec) -> None:
    """Validate `model:` against its architecture's config, with the YAML line on error."""
    loc = ("stages", index, "model")
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

    def check(self, cfg: Any, plan: Plan, index: int) -> None:
        check_model_spec(plan, index, cfg.model)
        if cfg.weights is not None and not plan.resolve(cfg.weights).exists():
            raise plan.doc.error(
                ("stages", index, "weights"),
                f"weights file {cfg.weights!r} "
                f"not found (looked in the working directory and "
                f"{plan.path.parent}); set `weights: null` to train a teacher",
            )

    def run(self, ctx: StageContext, cfg: TeacherConfig) -> dict[str, Artifact]:
        from edgekd.distill.distiller import Distiller
        from edgekd.distill.specs import CEConfig
        from edgekd.models.io import load_state, read_weights
        from edgekd.stages import context

        device, splits = context.prepare(ctx.plan)
        model = context.build_model(cfg.model, splits)
        if cfg.weights is not None:
            path = ctx.plan.resolve(cfg.weights)
            load_state(model, read_weights(path), str(path))
            ctx.log(f"loaded {path}")
            ctx.metrics["weights"] = str(path)
        else:
            ce_only = Distiller([("ce", 1.0, CEConfig())])
            context.train(
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
        meta = context.model_meta(
            cfg.model,
            splits,
            trained_by="edgekd teacher stage" if cfg.weights is None else f"weights {cfg.weights}",
        )
        artifact = context.save_and_score(ctx, "teacher", model, meta, splits, device)
        ctx.log(
            f"teacher test accuracy {ctx.metrics['test_acc']:.2f}% on {len(splits.test)} images"
        )
        return {"teacher": artifact}
