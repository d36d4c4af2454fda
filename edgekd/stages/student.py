"""Stage `student`: train the small student with the distillation loss against the teacher."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from edgekd.artifacts import Artifact
from edgekd.config.schema import Strict, TrainConfig
from edgekd.models.specs import ModelSpec
from edgekd.stages.base import STAGES, Stage, StageContext
from edgekd.stages.teacher import check_model_spec

if TYPE_CHECKING:
    from edgekd.pipeline import Plan


class StudentConfig(Strict):
    model: ModelSpec = Field(description="Architecture of the student (`arch` + its settings).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=3, lr=0.1),
        description="Training settings; the loss is `distill.losses`.",
    )


@STAGES.register("student")
class StudentStage(Stage):
    Config = StudentConfig
    requires = ("teacher",)
    produces = ("student", "student_fp32")

    def check(self, cfg: Any, plan: Plan, index: int) -> None:
        check_model_spec(plan, index, cfg.model)

    def run(self, ctx: StageContext, cfg: StudentConfig) -> dict[str, Artifact]:
        from edgekd.stages import context

        device, splits = context.prepare(ctx.plan)
        model = context.build_model(cfg.model, splits)
        context.train(ctx, model, cfg.train, splits, device, "student")
        meta = context.model_meta(cfg.model, splits)
        artifact = context.save_and_score(ctx, "student", model, meta, splits, device)
        ctx.log(f"student test accuracy {ctx.metrics['test_acc']:.2f}%")
        return {"student": artifact, "student_fp32": artifact}
