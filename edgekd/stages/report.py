"""Stage `report`: report.json (schema in docs/report.md) and report.md from the whole run."""

from __future__ import annotations

from pydantic import Field

from edgekd.artifacts import Artifact, write_json, write_text
from edgekd.config.schema import Strict
from edgekd.stage import STAGES, Stage, StageContext


class ReportConfig(Strict):
    copy_to_run_dir: bool = Field(
        True,
        description="Also write report.json/.md at the top of "
        "the run folder, where people and CI look first.",
    )


@STAGES.register("report")
class ReportStage(Stage):
    Config = ReportConfig
    requires = ("onnx", "bench")
    produces = ("report",)
    uses = ()
    cacheable = False

    def run(self, ctx: StageContext, cfg: ReportConfig) -> dict[str, Artifact]:
        from edgekd.report.build import build_report, load_inputs
        from edgekd.report.markdown import render

        onnx_index, bench = load_inputs(ctx.input_path("onnx"), ctx.input_path("bench"))
        stage_dirs = [(s.name, s.dirname) for s in ctx.plan.stages[: ctx.index]]
        report = build_report(
            ctx.run_dir, ctx.plan.config.name, str(ctx.plan.path), stage_dirs, onnx_index, bench
        )
        out = ctx.dir / "report"
        out.mkdir(exist_ok=True)
        write_json(out / "report.json", report)
        write_text(out / "report.md", render(report))
        if cfg.copy_to_run_dir:
            write_json(ctx.run_dir / "report.json", report)
            write_text(ctx.run_dir / "report.md", render(report))
        summary = report["summary"]
        if summary:
            ctx.metrics.update(
                teacher_test_acc=summary["teacher"]["test_acc"],
                final_test_acc=summary["final"]["test_acc"],
                bytes_ratio=summary["ratios"]["bytes"],
                ort_latency_ratio=summary["ratios"]["onnxruntime_latency"],
            )
        ctx.log(f"wrote {out / 'report.md'}")
        return {"report": ctx.artifact("report", out)}
