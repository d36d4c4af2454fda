"""Stage `qat`: NNCF INT8 quantization of the student, then KD fine-tuning against the teacher."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from edgekd.artifacts import Artifact
from edgekd.config.loader import load_yaml, validate
from edgekd.config.schema import CalibrationConfig, PathStr, Schedule, Strict, TrainConfig, default
from edgekd.errors import EdgeKDError
from edgekd.stage import STAGES, Stage, StageContext

if TYPE_CHECKING:
    from edgekd.plan import Plan


class QATTrain(TrainConfig):
    """The qat stage's training defaults: a low rate keeps the calibrated ranges useful."""

    epochs: float = default(TrainConfig, "epochs", 1)
    lr: float = default(TrainConfig, "lr", 0.005)
    schedule: Schedule = default(TrainConfig, "schedule", "cosine")


class QATConfig(Strict):
    calibration: PathStr = Field(
        "calibration/fashion-mnist-train-1024.yaml",
        description="Calibration-set definition (calibration/*.yaml).",
    )
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="NNCF preset: symmetric everywhere, or asymmetric activations."
    )
    train: QATTrain = Field(
        default_factory=QATTrain, description="KD fine-tuning of the quantized student."
    )


def check_calibration(plan: Plan, index: int, value: str) -> None:
    """The calibration file exists, is valid, and draws from the pipeline's data set."""
    path = plan.resolve(value)
    loc = ("stages", index, "calibration")
    if not path.exists():
        raise plan.doc.error(loc, f"calibration file {value!r} not found")
    doc = load_yaml(path)
    cfg = validate(CalibrationConfig, doc.data, doc)
    if cfg.dataset != plan.config.data.dataset:
        raise doc.error(
            ("dataset",),
            f"calibration set is for {cfg.dataset!r} but the "
            f"pipeline {plan.path} uses {plan.config.data.dataset!r}",
        )


def check_student_supports(plan: Plan, index: int, stage: str) -> None:
    """Stop at validate when the student is a named model that `stage` is known not to handle
    (models/specs.py KNOWN_FAILURES, measured by benchmarks/named_models.py), with the reason
    and at the line of the `model:` that chose it."""
    from edgekd.models.specs import ModelSpec, known_failure

    for earlier in reversed(plan.stages[:index]):
        model = getattr(earlier.cfg, "model", None)
        if "student" not in earlier.stage.produces or not isinstance(model, ModelSpec):
            continue
        reason = known_failure(model, stage)
        if reason is not None:
            name = model.arch_kwargs().get("name")
            raise plan.doc.error(
                ("stages", earlier.index, "model"),
                f"the {stage} stage (stage {index}) cannot handle {{arch: {model.arch}, name: "
                f"{name}}}: {reason} (found by benchmarks/named_models.py, "
                "docs/benchmarks/named_models.md); choose another student or drop the stage",
            )
        return


@STAGES.register("qat")
class QATStage(Stage):
    Config = QATConfig
    requires = ("teacher", "student")
    produces = ("student",)
    quantizes = True
    distributed = True  # trains on every rank under torchrun

    def check(self, cfg: Any, plan: Plan, index: int) -> None:
        check_calibration(plan, index, cfg.calibration)
        check_student_supports(plan, index, "qat")

    def run(self, ctx: StageContext, cfg: QATConfig) -> dict[str, Artifact]:
        from edgekd import training
        from edgekd.distill.trainer import evaluate
        from edgekd.quant import nncf_qat

        device, data = training.prepare(ctx.plan)
        model, meta = training.load_input_model(ctx, "student")
        splits = training.for_model(data, meta)
        if meta.get("quantization"):
            raise EdgeKDError("the student is already quantized; a pipeline has one `qat` stage")
        ctx.metrics["fp32_test_acc"] = round(
            evaluate(model.to(device), splits.test, splits, device, shard=True), 2
        )
        cal_cfg, calibration = training.calibration_set(ctx.plan, cfg.calibration, splits)
        quantized = nncf_qat.quantize(
            model, calibration, splits, cal_cfg.batch_size, device, cfg.preset
        )
        ctx.metrics["ptq_test_acc"] = round(
            evaluate(quantized, splits.test, splits, device, shard=True), 2
        )
        ctx.log(
            f"FP32 {ctx.metrics['fp32_test_acc']:.2f}% → PTQ INT8 "
            f"{ctx.metrics['ptq_test_acc']:.2f}% (calibrated on {len(calibration)} images)"
        )
        training.train(ctx, quantized, cfg.train, splits, device, "qat")
        meta.update(
            quantization=nncf_qat.config(quantized),
            calibration=cal_cfg.model_dump(),
            quant_preset=cfg.preset,
        )
        artifact = training.save_and_score(ctx, "student", quantized, meta, splits, device)
        ctx.log(f"QAT INT8 test accuracy {ctx.metrics['test_acc']:.2f}%")
        return {"student": artifact}
