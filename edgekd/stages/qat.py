"""Stage `qat`: the INT8 ladder. NNCF PTQ first; past the accuracy budget, per-layer
sensitivity and precision fallback (the worst layers stay float); KD-QAT against the teacher only
while the budget is still missed, or when the YAML asks. Every rung's validation and test
accuracy, and its exported model's latency on a target, go into the stage's metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from edgekd.artifacts import Artifact
from edgekd.config.loader import load_yaml, validate
from edgekd.config.schema import CalibrationConfig, PathStr, Schedule, Strict, TrainConfig, default
from edgekd.errors import EdgeKDError
from edgekd.latency import TimingConfig
from edgekd.stage import STAGES, Stage, StageContext

if TYPE_CHECKING:
    from edgekd.plan import Plan


class QATTrain(TrainConfig):
    """The qat stage's training defaults: a low rate keeps the calibrated ranges useful."""

    epochs: float = default(TrainConfig, "epochs", 1)
    lr: float = default(TrainConfig, "lr", 0.005)
    schedule: Schedule = default(TrainConfig, "schedule", "cosine")


class FallbackConfig(Strict):
    max_float_layers: int = Field(
        4, ge=0, description="Most layers the precision fallback leaves in float (0: none)."
    )
    sensitivity_images: int = Field(
        1000, gt=0, description="Validation images each layer's sensitivity is scored on."
    )


class QATConfig(Strict):
    calibration: PathStr = Field(
        "calibration/fashion-mnist-train-1024.yaml",
        description="Calibration-set definition (calibration/*.yaml).",
    )
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="NNCF preset: symmetric everywhere, or asymmetric activations."
    )
    weights: Literal["per_channel", "per_tensor"] = Field(
        "per_channel",
        description="Weight scales: one per output channel, or one per tensor (for NPUs and "
        "DSPs that take only per-tensor; harder on depthwise layers, where the ladder helps).",
    )
    max_accuracy_drop: float | None = Field(
        0.5,
        ge=0,
        description="Validation accuracy (points) INT8 may lose against FP32. Past it the "
        "ladder climbs: sensitivity and precision fallback, then KD-QAT (qat: auto). null: no "
        "budget; PTQ, then KD-QAT unless qat: never.",
    )
    qat: Literal["auto", "always", "never"] = Field(
        "auto",
        description="KD-QAT after PTQ and fallback: auto trains only while the drop exceeds "
        "max_accuracy_drop (or when there is no budget); always; never.",
    )
    fallback: FallbackConfig = Field(
        default_factory=FallbackConfig, description="Per-layer sensitivity and float fallback."
    )
    timing: TimingConfig | None = Field(
        default_factory=TimingConfig,
        description="Where each rung's exported model is timed; null: not timed (nor when no "
        "target runs on this machine: the record says why).",
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
        if cfg.timing is not None:
            from edgekd.latency import check_target

            check_target(plan, cfg.timing, ("stages", index, "timing"))

    def run(self, ctx: StageContext, cfg: QATConfig) -> dict[str, Artifact]:
        from edgekd import distributed, training
        from edgekd.distill.trainer import evaluate
        from edgekd.quant import nncf_qat
        from edgekd.quant.climb import Ladder

        device, data = training.prepare(ctx.plan)
        model, meta = training.load_input_model(ctx, "student")
        splits = training.for_model(data, meta)
        if meta.get("quantization"):
            raise EdgeKDError("the student is already quantized; a pipeline has one `qat` stage")
        model.to(device)
        ctx.metrics["fp32_test_acc"] = round(
            evaluate(model, splits.test, splits, device, shard=True), 2
        )
        cal_cfg, calibration = training.calibration_set(ctx.plan, cfg.calibration, splits)
        ladder = Ladder(ctx, cfg, model, splits, calibration, cal_cfg.batch_size, device)
        # Rank 0 alone climbs (its PTQ runs, sensitivity and timing use no collectives); the
        # other ranks take the chosen quantized model and the record.
        quantized, record = distributed.once(ladder.climb, ladder.share, ladder.rebuild)
        ctx.metrics.update(ladder=record, ptq_test_acc=record["rungs"][1]["test_acc"])
        if record["qat"]["run"]:
            training.train(ctx, quantized, cfg.train, splits, device, "qat")
            ladder.after_qat(quantized, record)
        meta.update(
            quantization=nncf_qat.config(quantized),
            calibration=cal_cfg.model_dump(),
            quant_preset=cfg.preset,
            quant_weights=cfg.weights,
            float_layers=record["float_nodes"],
        )
        artifact = training.save_and_score(ctx, "student", quantized, meta, splits, device)
        ctx.log(f"INT8 test accuracy {ctx.metrics['test_acc']:.2f}%")
        return {"student": artifact}
