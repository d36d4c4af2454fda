"""Stage `prune`: DepGraph channel pruning that must pay in measured latency, then KD recovery
(quantization-aware when the student is already INT8: prune the float weights, re-insert
calibrated quantizers with the same float layers, KD + QAT).

How much is pruned is a fixed `ratio` or the amount a `latency_budget_ms` needs on the timing
target; a step that does not make the exported model measurably faster there is rejected and the
student passes through unchanged (edgekd/prune/job.py, edgekd/prune/budget.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from edgekd.artifacts import Artifact
from edgekd.config.schema import PathStr, Schedule, Strict, TrainConfig, default
from edgekd.errors import EdgeKDError
from edgekd.latency import TimingConfig
from edgekd.report.steps import pruned_amount
from edgekd.stage import STAGES, Stage, StageContext
from edgekd.stages.qat import check_calibration, check_student_supports

if TYPE_CHECKING:
    from edgekd.plan import Plan


class PruneTrain(TrainConfig):
    """The prune stage's recovery defaults."""

    epochs: float = default(TrainConfig, "epochs", 1)
    lr: float = default(TrainConfig, "lr", 0.01)
    schedule: Schedule = default(TrainConfig, "schedule", "cosine")


def _known_importance(name: str) -> str:
    from edgekd.prune.importance import IMPORTANCE

    IMPORTANCE.get(name)  # an unknown name says "did you mean" and lists the valid ones
    return name


class PruneConfig(Strict):
    ratio: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Share of channels removed from every prunable layer (torch-pruning's "
        "pruning_ratio); with allocation: latency, the share of all channels.",
    )
    latency_budget_ms: float | None = Field(
        None,
        gt=0,
        description="Instead of `ratio`: prune as little as meets this batch-1 latency (ms) "
        "of the exported model on the timing target, found by measuring.",
    )
    allocation: Literal["uniform", "latency", "sensitivity"] | None = Field(
        None,
        description="Per-layer ratios: uniform (every layer the same), latency (channels "
        "ranked across layers by importance per MAC), or sensitivity (each layer pruned alone "
        "and scored on validation images first; as many MACs as the uniform `ratio` removed "
        "where they cost the least loss). null: uniform with `ratio`, sensitivity with "
        "`latency_budget_ms`.",
    )
    importance: Annotated[str, AfterValidator(_known_importance)] = Field(
        "group_norm",
        description="Channel importance: l1, l2 (filter norms), group_norm (DepGraph's group "
        "L2), taylor, hessian (gradients on 256 labelled training images).",
    )
    round_to: int = Field(8, ge=1, description="Keep channel counts multiples of this.")
    require_speedup: bool = Field(
        True,
        description="Keep the pruned model only if it is measurably faster on the timing "
        "target (beyond both rows' noise); else the student passes through unchanged.",
    )
    min_speedup: float = Field(
        0.0, ge=0, lt=1, description="Least relative speed-up a kept pruning step must show."
    )
    max_probes: int = Field(
        6, ge=1, description="latency_budget_ms: most pruned copies timed while searching."
    )
    timing: TimingConfig | None = Field(
        default_factory=TimingConfig,
        description="Where pruned and unpruned models are timed; null: never timed "
        "(require_speedup is not checked; latency_budget_ms needs it).",
    )
    bn_recalibration_images: int = Field(
        2048,
        ge=0,
        description="Training images used to re-estimate BatchNorm statistics "
        "right after pruning (0 = keep the old ones).",
    )
    calibration: PathStr | None = Field(
        None,
        description="Calibration set used to re-quantize a "
        "quantized student after pruning; required after `qat`.",
    )
    train: PruneTrain = Field(
        default_factory=PruneTrain, description="KD recovery fine-tuning after pruning."
    )

    @model_validator(mode="after")
    def _one_amount(self) -> PruneConfig:
        if self.latency_budget_ms is not None:
            if "ratio" in self.model_fields_set:
                raise ValueError("give `ratio` or `latency_budget_ms`, not both")
            if self.timing is None:
                raise ValueError("latency_budget_ms is measured: `timing` cannot be null")
        return self

    def default_allocation(self) -> str:
        # With a budget, sensitivity: in docs/benchmarks/pruning*.md it was as accurate as the
        # uniform ratio at ×0.85 and more accurate at ×0.75, where `latency` was less accurate
        # than uniform and could not reach ×0.75 at all.
        return "uniform" if self.latency_budget_ms is None else "sensitivity"


@STAGES.register("prune")
class PruneStage(Stage):
    Config = PruneConfig
    requires = ("teacher", "student")
    produces = ("student",)
    # `targets` too: with no timing target set, the pipeline's first local target times it.
    uses = ("seed", "device", "data", "distill", "targets")
    distributed = True  # its recovery training runs on every rank under torchrun

    def check(self, cfg: Any, plan: Plan, index: int) -> None:
        after_qat = any(s.stage.quantizes for s in plan.stages[:index])
        if after_qat and cfg.calibration is None:
            raise plan.doc.error(
                ("stages", index),
                "prune after qat re-quantizes the pruned "
                "student: set `calibration:` (e.g. the qat stage's file)",
            )
        if cfg.calibration is not None:
            check_calibration(plan, index, cfg.calibration)
        if cfg.timing is not None:
            from edgekd.latency import check_target

            check_target(plan, cfg.timing, ("stages", index, "timing"))
        check_student_supports(plan, index, "prune")

    def run(self, ctx: StageContext, cfg: PruneConfig) -> dict[str, Artifact]:
        from edgekd import distributed, training
        from edgekd.distill.trainer import evaluate
        from edgekd.models import zoo
        from edgekd.models.io import load_state, resize_to_state_dict
        from edgekd.models.specs import ModelSpec
        from edgekd.prune.depgraph import channel_counts
        from edgekd.prune.job import PruneJob
        from edgekd.quant import nncf_qat

        device, data = training.prepare(ctx.plan)
        loaded, meta = training.load_input_model(ctx, "student")
        splits = training.for_model(data, meta)
        quantized = bool(meta.get("quantization"))
        if quantized and cfg.calibration is None:
            raise EdgeKDError(
                "the student is quantized: set `calibration:` on the prune "
                "stage so the pruned model can be re-quantized"
            )
        spec = ModelSpec.model_validate(meta["spec"])
        model = training.build_model(spec, splits)
        state = nncf_qat.float_state(loaded)
        resize_to_state_dict(model, state)
        load_state(model, state, "student")
        params_before = zoo.count_params(model)
        job = PruneJob(ctx, cfg, model, loaded.eval().cpu(), splits, meta)
        # Under torchrun rank 0 alone decides (DepGraph, timing, BN recalibration); the others
        # take its weights and its record.
        model, record = distributed.once(job.decide, job.share, job.rebuild)
        ctx.metrics.update(params_before=params_before, pruning=record)
        ctx.log(_summary(record, params_before, zoo.count_params(model)))
        if not record["kept"]:
            meta["pruned"] = {"kept": False, "why": record.get("why")}
            artifact = training.save_and_score(ctx, "student", loaded, meta, splits, device)
            ctx.metrics["channels"] = channel_counts(model)
            return {"student": artifact}
        ctx.metrics["channels"] = channel_counts(model)
        if quantized:
            assert cfg.calibration is not None
            cal_cfg, calibration = training.calibration_set(ctx.plan, cfg.calibration, splits)
            model = nncf_qat.quantize(
                model,
                calibration,
                splits,
                cal_cfg.batch_size,
                device,
                meta.get("quant_preset", "performance"),  # as the qat stage quantized it
                ignored=meta.get("float_layers") or None,  # its float layers stay float
                per_channel=meta.get("quant_weights", "per_channel") == "per_channel",
            )
        model.to(device)
        ctx.metrics["pruned_test_acc"] = round(
            evaluate(model, splits.test, splits, device, shard=True), 2
        )
        ctx.log(f"test accuracy before recovery {ctx.metrics['pruned_test_acc']:.2f}%")
        training.train(ctx, model, cfg.train, splits, device, "prune recovery")
        meta.update(
            pruned={
                "ratio": record["ratio"],
                "round_to": cfg.round_to,
                "allocation": record["allocation"],
                "importance": record["importance"],
            },
            quantization=nncf_qat.config(model) if quantized else None,
        )
        artifact = training.save_and_score(ctx, "student", model, meta, splits, device)
        ctx.log(f"pruned student test accuracy {ctx.metrics['test_acc']:.2f}%")
        return {"student": artifact}


def _summary(record: dict[str, Any], before: int, after: int) -> str:
    """`pruned 25 % of channels (uniform, group_norm), 135,818 → 78,618 parameters;
    0.0760 → 0.0750 ms (...): not measurably faster, not kept`."""
    if "ratio" not in record:
        return f"not pruned: {record.get('why')}"
    head = f"pruned {pruned_amount(record)} ({record['allocation']}, {record['importance']})"
    if record["kept"]:
        head += f", {before:,} → {after:,} parameters"
    return f"{head}; {record.get('why', '')}"
