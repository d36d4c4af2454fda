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


class AssistantConfig(Strict):
    """Mirzadeh et al. 2020, Teacher Assistant KD: a mid-sized model is distilled from the
    teacher first and then teaches the student, bridging a large capacity gap."""

    model: ModelSpec = Field(description="Architecture of the assistant.")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=3, lr=0.1),
        description="Training of the assistant (same `distill.losses`, from the teacher).",
    )


class StudentConfig(Strict):
    model: ModelSpec = Field(description="Architecture of the student (`arch` + its settings).")
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=3, lr=0.1),
        description="Training settings; the loss is `distill.losses`.",
    )
    assistant: AssistantConfig | None = Field(
        None,
        description="TAKD: teacher → assistant → student. The assistant teaches the student "
        "in this stage; later stages (qat, prune) keep the teacher stage's teacher.",
    )


@STAGES.register("student")
class StudentStage(Stage):
    Config = StudentConfig
    requires = ("teacher",)
    produces = ("student", "student_fp32")

    def check(self, cfg: Any, plan: Plan, index: int) -> None:
        check_model_spec(plan, index, cfg.model)
        if cfg.assistant is not None:
            check_model_spec(plan, index, cfg.assistant.model, ("assistant", "model"))
            for i, (name, _, term) in enumerate(plan.losses):
                if getattr(term, "kind", "") in ("feature", "relation"):
                    raise plan.doc.error(
                        ("distill", "losses", i),
                        f"{name} pairs layers of the teacher and the student by name; with an "
                        "assistant the layer names of the teacher do not apply to it. Use logit "
                        "losses with `assistant:`",
                    )

    def run(self, ctx: StageContext, cfg: StudentConfig) -> dict[str, Artifact]:
        from edgekd.stages import context

        device, splits = context.prepare(ctx.plan)
        if cfg.assistant is not None:
            assistant = context.build_model(cfg.assistant.model, splits)
            context.train(
                ctx,
                assistant,
                cfg.assistant.train,
                splits,
                device,
                "assistant",
                fresh=True,
                history_key="assistant_history",
            )
            meta = context.model_meta(cfg.assistant.model, splits, role="teacher assistant")
            context.save_and_score(ctx, "assistant", assistant, meta, splits, device, "assistant_")
            ctx.log(f"assistant test accuracy {ctx.metrics['assistant_test_acc']:.2f}%")
            ctx.teacher_override = ctx.dir / "assistant"
        model = context.build_model(cfg.model, splits)
        context.train(ctx, model, cfg.train, splits, device, "student", fresh=True)
        meta = context.model_meta(cfg.model, splits)
        artifact = context.save_and_score(ctx, "student", model, meta, splits, device)
        ctx.log(f"student test accuracy {ctx.metrics['test_acc']:.2f}%")
        return {"student": artifact, "student_fp32": artifact}
