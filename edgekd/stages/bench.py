"""Stage `bench`: latency of the teacher, the FP32 student and the final model on every target
the pipeline names, with the same runners and protocol everywhere; each runtime's outputs are
checked against eager PyTorch on real test images before it is timed."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from edgekd.artifacts import Artifact, write_json
from edgekd.config.schema import Strict
from edgekd.contracts import ROLES, ModelsIndex
from edgekd.runners.base import DEFAULT_GATE, MeasureProtocol
from edgekd.stage import STAGES, Stage, StageContext

PROTOCOL = MeasureProtocol()  # the defaults of the measurement protocol, kept in one place


class BenchConfig(Strict):
    warmup: int = Field(PROTOCOL.warmup, ge=0, description="Untimed runs first.")
    iterations: int = Field(
        PROTOCOL.iterations, ge=10, description="At least this many timed runs."
    )
    min_seconds: float = Field(PROTOCOL.min_seconds, ge=0, description="And at least this long.")
    batch: list[int] = Field(
        default_factory=lambda: [1], description="Batch sizes timed: one number or a list."
    )
    threads: int | None = Field(
        None, gt=0, description="CPU threads; null = the target's `threads`, else all cores."
    )
    rounds: int = Field(
        3,
        ge=1,
        description="Time every local row this many times, each in a fresh process, going "
        "through all the rows before repeating one; each row then reports the median of the "
        "rounds' medians and their spread, and a CI gate pairs two rows round by round "
        "(docs/ci.md). 1: one process per row, a third of the time.",
    )
    check_images: int = Field(
        500, gt=0, description="Test images each runner's outputs are checked on before timing."
    )
    min_top1_agreement: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_GATE),
        description="Least top-1 agreement (%) with PyTorch per precision for a row to pass "
        f"(and be chosen); precisions not named keep their defaults {DEFAULT_GATE}.",
    )

    @field_validator("min_top1_agreement")
    @classmethod
    def _over_defaults(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(DEFAULT_GATE))
        if unknown:
            raise ValueError(f"unknown precision {unknown}; choose from {sorted(DEFAULT_GATE)}")
        if any(not 0 <= v <= 100 for v in value.values()):
            raise ValueError("agreements are percentages, 0 to 100")
        return {**DEFAULT_GATE, **value}

    @field_validator("batch", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value

    @field_validator("batch")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(b <= 0 for b in value):
            raise ValueError("batch sizes must be positive")
        return value


@STAGES.register("bench")
class BenchStage(Stage):
    Config = BenchConfig
    requires = ("onnx", *(role.artifact for role in ROLES))
    produces = ("bench",)
    uses = ("seed", "data", "targets")

    def run(self, ctx: StageContext, cfg: BenchConfig) -> dict[str, Artifact]:
        import numpy as np

        from edgekd import training
        from edgekd.data.datasets import normalize
        from edgekd.runners.targets import BenchModel, BenchPlan, Reference, measure_target

        _, data = training.prepare(ctx.plan)
        onnx_dir = ctx.input_path("onnx")
        index = ModelsIndex.read(onnx_dir).models
        n = min([cfg.check_images] + [m.reference.images for m in index if m.reference])
        models, references = [], {}
        for m in index:
            path = onnx_dir / m.file
            splits = training.for_model(data, {"preprocessing": m.preprocessing})
            images = normalize(splits.test.images[:n], splits)
            if m.reference:
                torch_dir = ctx.input_path(m.role.artifact)
                outputs = np.load(onnx_dir / m.reference.file)[:n]
                references[m.role.value] = Reference(outputs, "torch")
            else:  # an ONNX teacher: no PyTorch model exists, the file is its own reference
                torch_dir = None
                outputs = training.onnx_predict(path, images).numpy()
                references[m.role.value] = Reference(outputs, "onnxruntime-cpu")
            tensorrt = onnx_dir / m.file_tensorrt if m.file_tensorrt else None
            models.append(
                BenchModel(m.role.value, path, m.precision, torch_dir, tensorrt, images.numpy())
            )
        shared = models[0].images  # each model carries its own; this is the fallback
        assert shared is not None
        plan = BenchPlan(
            protocol=MeasureProtocol(
                cfg.warmup, cfg.iterations, cfg.min_seconds, cfg.batch[0], cfg.threads
            ),
            batches=cfg.batch,
            gate=cfg.min_top1_agreement,
            workdir=ctx.dir / "engines",
            rounds=cfg.rounds,
        )
        rows = []
        for target, source in zip(ctx.plan.targets, ctx.plan.config.targets, strict=True):
            ctx.log(f"target {target.name} ({target.kind})")
            for row in measure_target(target, source, models, plan, shared, references):
                rows.append(row)
                ctx.log("  " + row_line(row))
        path = ctx.dir / "bench.json"
        write_json(path, {"protocol": cfg.model_dump(), "rows": rows})
        ctx.metrics["rows_ok"] = sum(r["status"] == "ok" for r in rows)
        ctx.metrics["rows_skipped"] = sum(r["status"] == "skipped" for r in rows)
        ctx.metrics["rows_failed"] = sum(r["status"] == "failed" for r in rows)
        return {"bench": ctx.artifact("bench", path)}


def row_line(row: dict[str, Any]) -> str:
    """One latency row as a log line."""
    runtime = row["runtime"] + (f"/{row['device']}" if "dla_core" in row else "")  # on a DLA
    head = f"{row['model']:<13} {runtime:<15} {row['precision']:<4} b{row['batch']:<3}"
    if row["status"] != "ok":
        return f"{head} {row['status']}: {row['reason']}"
    check = row["check"]
    verdict = "passed" if check["passed"] else "FAILED"
    mark = "  ← chosen" if row.get("chosen") else ""
    return (
        f"{head} median {row['median_ms']:.3f} ms  p90 {row['p90_ms']:.3f} ms  check "
        f"{verdict} ({check.get('top1_agreement', '–')}% top-1 vs {check['reference']}){mark}"
    )
