"""Stage `prune`: DepGraph channel pruning, then KD recovery (quantization-aware when the
student is already INT8: prune the float weights, re-insert calibrated quantizers, KD + QAT)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from edgekd.artifacts import Artifact
from edgekd.config.schema import PathStr, Schedule, Strict, TrainConfig, default
from edgekd.errors import EdgeKDError
from edgekd.stage import STAGES, Stage, StageContext
from edgekd.stages.qat import check_calibration, check_student_supports

if TYPE_CHECKING:
    from edgekd.plan import Plan


class PruneTrain(TrainConfig):
    """The prune stage's recovery defaults."""

    epochs: float = default(TrainConfig, "epochs", 1)
    lr: float = default(TrainConfig, "lr", 0.01)
    schedule: Schedule = default(TrainConfig, "schedule", "cosine")


class PruneConfig(Strict):
    ratio: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Share of channels removed from every "
        "prunable layer (torch-pruning's pruning_ratio).",
    )
    round_to: int = Field(8, ge=1, description="Keep channel counts multiples of this.")
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


@STAGES.register("prune")
class PruneStage(Stage):
    Config = PruneConfig
    requires = ("teacher", "student")
    produces = ("student",)
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
        check_student_supports(plan, index, "prune")

    def run(self, ctx: StageContext, cfg: PruneConfig) -> dict[str, Artifact]:
        import torch

        from edgekd import distributed, training
        from edgekd.data.datasets import batches, sample
        from edgekd.distill.trainer import evaluate
        from edgekd.models import zoo
        from edgekd.models.io import load_state, resize_to_state_dict
        from edgekd.models.specs import ModelSpec
        from edgekd.prune.depgraph import channel_counts, prune_channels, recalibrate_batchnorm
        from edgekd.quant import nncf_qat

        device, data = training.prepare(ctx.plan)
        loaded, meta = training.load_input_model(ctx, "student")
        splits = training.for_model(data, meta)
        spec = ModelSpec.model_validate(meta["spec"])
        model = training.build_model(spec, splits)
        state = nncf_qat.float_state(loaded)
        resize_to_state_dict(model, state)
        load_state(model, state, "student")
        example = torch.zeros(1, *splits.input_shape)
        params_before = zoo.count_params(model)

        def prune() -> torch.nn.Module:
            prune_channels(model, example, cfg.ratio, cfg.round_to, len(splits.classes))
            if cfg.bn_recalibration_images:
                seed = ctx.plan.config.seed
                recalibration = sample(splits.train, cfg.bn_recalibration_images, seed)
                images = [b.images for b in batches(recalibration, splits, 256)]
                recalibrate_batchnorm(model, images)
            return model

        def rebuild(pruned: dict[str, torch.Tensor]) -> torch.nn.Module:
            resize_to_state_dict(model, pruned)
            load_state(model, pruned, "pruned student")
            return model

        # Under torchrun rank 0 alone runs DepGraph (and the BN recalibration); the others
        # take its pruned weights.
        model = distributed.once(prune, lambda m: m.state_dict(), rebuild)
        ctx.metrics.update(params_before=params_before, channels=channel_counts(model))
        quantized = bool(meta.get("quantization"))
        if quantized:
            if cfg.calibration is None:
                raise EdgeKDError(
                    "the student is quantized: set `calibration:` on the prune "
                    "stage so the pruned model can be re-quantized"
                )
            cal_cfg, calibration = training.calibration_set(ctx.plan, cfg.calibration, splits)
            # Same NNCF preset as the qat stage that quantized the student.
            preset = meta.get("quant_preset", "performance")
            model = nncf_qat.quantize(
                model, calibration, splits, cal_cfg.batch_size, device, preset
            )
        model.to(device)
        ctx.metrics["pruned_test_acc"] = round(
            evaluate(model, splits.test, splits, device, shard=True), 2
        )
        ctx.log(
            f"pruned {params_before} → {zoo.count_params(model)} parameters; test accuracy "
            f"before recovery {ctx.metrics['pruned_test_acc']:.2f}%"
        )
        training.train(ctx, model, cfg.train, splits, device, "prune recovery")
        meta.update(
            pruned={"ratio": cfg.ratio, "round_to": cfg.round_to},
            quantization=nncf_qat.config(model) if quantized else None,
        )
        artifact = training.save_and_score(ctx, "student", model, meta, splits, device)
        ctx.log(f"pruned student test accuracy {ctx.metrics['test_acc']:.2f}%")
        return {"student": artifact}
