"""Stage `student`: train the small student with the distillation loss against the teacher.

The architecture is the `architecture` artifact of an earlier stage when one produced it (a
search), else the stage's own `model:`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from edgekd.artifacts import Artifact
from edgekd.config.schema import Normalization, Strict, TrainConfig, default
from edgekd.models.specs import ModelSpec
from edgekd.stage import STAGES, Stage, StageContext
from edgekd.stages.teacher import check_model_spec

if TYPE_CHECKING:
    from edgekd.plan import Plan


class StudentTrain(TrainConfig):
    """The student stage's training defaults."""

    epochs: float = default(TrainConfig, "epochs", 3)
    lr: float = default(TrainConfig, "lr", 0.1)


class AssistantConfig(Strict):
    """Mirzadeh et al. 2020, Teacher Assistant KD: a mid-sized model is distilled from the
    teacher first and then teaches the student, bridging a large capacity gap."""

    model: ModelSpec = Field(description="Architecture of the assistant.")
    train: StudentTrain = Field(
        default_factory=StudentTrain,
        description="Training of the assistant (same `distill.losses`, from the teacher).",
    )


class StudentConfig(Strict):
    model: ModelSpec | None = Field(
        None,
        description="Architecture of the student (`arch` + its settings); taken only when no "
        "earlier stage (a search) produces the `architecture` artifact.",
    )
    normalize: Normalization | None = Field(
        None,
        description="The student's input normalisation, written into the exported model's "
        "preprocess.json; null: the training split's statistics.",
    )
    train: StudentTrain = Field(
        default_factory=StudentTrain, description="Training settings; the loss is `distill.losses`."
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
    optional = ("architecture",)
    produces = ("student", "student_fp32")
    distributed = True  # trains on every rank under torchrun

    def check(self, cfg: Any, plan: Plan, index: int) -> None:
        from edgekd.distill import rules

        searched = "architecture" in plan.produced_before(index)
        if cfg.model is None and not searched:
            raise plan.doc.error(
                ("stages", index),
                "the student needs `model:` (no earlier stage produces an `architecture`)",
            )
        if cfg.model is not None:
            check_model_spec(plan, index, cfg.model)
        if cfg.assistant is not None:
            check_model_spec(plan, index, cfg.assistant.model, ("assistant", "model"))
            rules.check_plan(plan, assistant=True)

    def run(self, ctx: StageContext, cfg: StudentConfig) -> dict[str, Artifact]:
        from edgekd import training
        from edgekd.contracts import Architecture
        from edgekd.models.io import load_model

        device, data = training.prepare(ctx.plan)
        splits = training.normalized(data, cfg.normalize)
        start = None
        if ctx.has_input("architecture"):
            folder = ctx.input_path("architecture")
            chosen = Architecture.read(folder)
            spec = ModelSpec.model_validate(chosen.model)
            ctx.log(f"architecture from {chosen.source or 'an earlier stage'}: {chosen.model}")
            if cfg.model is not None:
                ctx.log("the stage's own `model:` is not used: an earlier stage chose one")
            if chosen.init is not None:
                start, _ = load_model(folder / chosen.init)
                ctx.log("starting from the weights the search cut from the teacher")
                if cfg.normalize is None and chosen.normalize is not None:
                    splits = data.normalized_by(chosen.normalize["mean"], chosen.normalize["std"])
        else:
            assert cfg.model is not None  # checked when the plan was loaded
            spec = cfg.model
        if cfg.assistant is not None:
            assistant = training.build_model(cfg.assistant.model, splits)
            training.train(
                ctx,
                assistant,
                cfg.assistant.train,
                splits,
                device,
                "assistant",
                fresh=True,
                history_key="assistant_history",
            )
            meta = training.model_meta(cfg.assistant.model, splits, role="teacher assistant")
            training.save_and_score(ctx, "assistant", assistant, meta, splits, device, "assistant_")
            ctx.log(f"assistant test accuracy {ctx.metrics['assistant_test_acc']:.2f}%")
            ctx.teacher_override = ctx.dir / "assistant"
        model = start if start is not None else training.build_model(spec, splits)
        training.train(ctx, model, cfg.train, splits, device, "student", fresh=start is None)
        meta = training.model_meta(spec, splits)
        artifact = training.save_and_score(ctx, "student", model, meta, splits, device)
        ctx.log(f"student test accuracy {ctx.metrics['test_acc']:.2f}%")
        return {"student": artifact, "student_fp32": artifact}
