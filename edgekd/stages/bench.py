"""Stage `bench`: latency of the teacher, the FP32 student and the final model on every target
the pipeline names, with the same runners and protocol everywhere."""

from __future__ import annotations

from pydantic import Field

from edgekd.artifacts import Artifact, read_json, write_json
from edgekd.config.schema import Strict
from edgekd.stages.base import STAGES, Stage, StageContext


class BenchConfig(Strict):
    warmup: int = Field(20, ge=0, description="Untimed runs first.")
    iterations: int = Field(200, ge=10, description="At least this many timed runs.")
    min_seconds: float = Field(1.0, ge=0, description="And at least this long.")
    batch: int = Field(1, gt=0, description="Batch size timed.")
    threads: int | None = Field(
        None, gt=0, description="CPU threads; null = the target's `threads`, else all cores."
    )
    check_images: int = Field(
        500, gt=0, description="Test images each runner's outputs are checked on before timing."
    )


@STAGES.register("bench")
class BenchStage(Stage):
    Config = BenchConfig
    requires = ("onnx",)
    produces = ("bench",)
    uses = ("seed", "data", "targets")

    def run(self, ctx: StageContext, cfg: BenchConfig) -> dict[str, Artifact]:
        from edgekd.data.datasets import normalize
        from edgekd.export.onnx import onnx_logits
        from edgekd.runners.base import MeasureProtocol
        from edgekd.runners.targets import BenchModel, measure_target
        from edgekd.stages import context

        _, splits = context.prepare(ctx.plan)
        onnx_dir = ctx.input_path("onnx")
        index = read_json(onnx_dir / "models.json")["models"]
        models = [BenchModel(m["role"], onnx_dir / m["file"], m["precision"]) for m in index]
        images = normalize(splits.test.images[: cfg.check_images], splits)
        reference = {m.role: onnx_logits(m.path, images) for m in models}
        protocol = MeasureProtocol(
            cfg.warmup, cfg.iterations, cfg.min_seconds, cfg.batch, cfg.threads
        )
        rows = []
        for target, source in zip(ctx.plan.targets, ctx.plan.config.targets, strict=True):
            ctx.log(f"target {target.name} ({target.kind})")
            for row in measure_target(target, source, models, protocol, images.numpy(), reference):
                rows.append(row)
                if row["status"] == "ok":
                    ctx.log(
                        f"  {row['model']:<13} {row['precision']} {row['runtime']:<11} "
                        f"median {row['median_ms']:.3f} ms  p90 {row['p90_ms']:.3f} ms"
                    )
                else:
                    ctx.log(
                        f"  {row['model']:<13} {row['runtime']:<11} {row['status']}: "
                        f"{row['reason']}"
                    )
        path = ctx.dir / "bench.json"
        write_json(path, {"protocol": cfg.model_dump(), "rows": rows})
        ctx.metrics["rows_ok"] = sum(r["status"] == "ok" for r in rows)
        ctx.metrics["rows_skipped"] = sum(r["status"] == "skipped" for r in rows)
        ctx.metrics["rows_failed"] = sum(r["status"] == "failed" for r in rows)
        return {"bench": ctx.artifact("bench", path)}
