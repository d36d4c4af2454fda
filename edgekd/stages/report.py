"""Stage `report`: report.json (schema in docs/report.md), report.md and report.html from the
whole run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from edgekd.artifacts import Artifact, write_json, write_text
from edgekd.config.schema import Strict
from edgekd.stage import STAGES, Stage, StageContext


class ReportConfig(Strict):
    copy_to_run_dir: bool = Field(
        True,
        description="Also write report.json/.md/.html at the top of "
        "the run folder, where people and CI look first.",
    )


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """report.json, report.md and report.html in `folder`, each written atomically."""
    from edgekd.report.html import render_html
    from edgekd.report.markdown import render

    write_json(folder / "report.json", report)
    write_text(folder / "report.md", render(report))
    write_text(folder / "report.html", render_html(report))


@STAGES.register("report")
class ReportStage(Stage):
    Config = ReportConfig
    requires = ("onnx", "bench")
    produces = ("report",)
    uses = ()
    cacheable = False

    def run(self, ctx: StageContext, cfg: ReportConfig) -> dict[str, Artifact]:
        from edgekd.report.build import build_report, load_inputs

        onnx_dir = ctx.input_path("onnx")
        onnx_index, bench = load_inputs(onnx_dir, ctx.input_path("bench"))
        stage_dirs = [(s.name, s.dirname) for s in ctx.plan.stages[: ctx.index]]
        report = build_report(
            ctx.run_dir,
            ctx.plan.config.name,
            str(ctx.plan.path),
            stage_dirs,
            onnx_index,
            bench,
            onnx_dir,
        )
        out = ctx.dir / "report"
        out.mkdir(exist_ok=True)
        write_report(out, report)
        if cfg.copy_to_run_dir:
            write_report(ctx.run_dir, report)
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
