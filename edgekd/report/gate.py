"""The regression gate behind `edgekd check`: compares a report with limits and a baseline.

Latency against a baseline is compared **noise-aware**: not the final model's milliseconds (on
shared machines the same file measures 2× apart between runs), but its ratio to the teacher's
FP32 latency measured in the same run, on the same target and runtime. A machine that is slower
overall slows both and leaves the ratio; a student that alone got slower moves it. Rows timed in
several rounds (bench `rounds:`) are paired round by round, the ratio being the median of the
rounds' ratios (edgekd/latency.py `row_ratio`); the ratio's own uncertainty is subtracted before
the tolerance applies, so a regression must exceed the noise to fail. Where that stops working
(a change that slows the teacher too, rows measured with too few runs): docs/ci.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from edgekd.contracts import Role
from edgekd.errors import EdgeKDError
from edgekd.latency import row_ratio
from edgekd.report.build import SCHEMA_VERSION, fastest, fastest_per_target

# What a baseline comparison uses when no tolerance is given (printed when applied).
BASELINE_DEFAULTS = {
    "max_acc_regression": 0.5,  # points
    "max_latency_regression": 10.0,  # percent, of the final/teacher latency ratio
    "max_size_growth": 5.0,  # percent, of the final ONNX file's bytes
}


@dataclass(frozen=True)
class Limits:
    min_acc: float | None = None  # final test accuracy, %
    max_acc_drop: float | None = None  # teacher − final, percentage points
    max_params: int | None = None
    max_bytes_ratio: float | None = None  # final ONNX bytes ÷ teacher's
    max_latency_ms: float | None = None  # final model's fastest measured median
    min_parity_top1: float | None = None  # final ONNX vs PyTorch top-1 agreement, %
    max_parity_diff: float | None = None  # final ONNX vs PyTorch max |logit difference|
    max_acc_regression: float | None = None  # points lost against the baseline report
    max_latency_regression: float | None = None  # percent, noise-aware (module docstring)
    max_size_growth: float | None = None  # percent growth of the final file's bytes

    def with_defaults(self) -> tuple[Limits, list[str]]:
        """These limits with BASELINE_DEFAULTS for every baseline tolerance not set, and the
        names of those filled in."""
        filled = {k: v for k, v in BASELINE_DEFAULTS.items() if getattr(self, k) is None}
        values = {f.name: getattr(self, f.name) for f in fields(self)} | filled
        return Limits(**values), sorted(filled)


@dataclass(frozen=True)
class Result:
    name: str
    passed: bool
    detail: str


def check(
    report: dict[str, Any], limits: Limits, baseline: dict[str, Any] | None = None
) -> list[Result]:
    """One result for every limit that is set (per target for latency against a baseline)."""
    for which, data in (("report", report), ("baseline", baseline)):
        if data is not None and data.get("schema_version") != SCHEMA_VERSION:
            raise EdgeKDError(
                f"{which} schema_version {data.get('schema_version')} is not "
                f"{SCHEMA_VERSION}; rerun the pipeline with this edgekd"
            )
    summary = report.get("summary") or {}
    if not summary:
        raise EdgeKDError("the report has no teacher/final summary (no export stage?)")
    final = summary["final"]
    latency = final["best"]["median_ms"] if final.get("best") else None
    parity = _final_model(report).get("parity") or {}
    results: list[Result] = []

    def gate(name: str, limit: float | None, value: float | None, upper: bool) -> None:
        if limit is None:
            return
        if value is None:
            results.append(Result(name, False, "not measured"))
            return
        ok = value <= limit if upper else value >= limit
        results.append(Result(name, ok, f"{value:g} {'≤' if upper else '≥'} {limit:g}"))

    gate("final test accuracy %", limits.min_acc, final["test_acc"], upper=False)
    gate(
        "accuracy drop vs teacher (points)",
        limits.max_acc_drop,
        summary["accuracy_drop_pp"],
        upper=True,
    )
    gate("final parameters", limits.max_params, final["params"], upper=True)
    gate(
        "bytes ratio final/teacher", limits.max_bytes_ratio, summary["ratios"]["bytes"], upper=True
    )
    gate("final latency ms (fastest runtime)", limits.max_latency_ms, latency, upper=True)
    gate(
        "final ONNX vs PyTorch top-1 agreement %",
        limits.min_parity_top1,
        parity.get("top1_agreement"),
        upper=False,
    )
    gate(
        "final ONNX vs PyTorch max |logit diff|",
        limits.max_parity_diff,
        parity.get("max_abs_diff"),
        upper=True,
    )
    if baseline is None:
        return results
    base_final = baseline["summary"]["final"]
    gate(
        "accuracy regression vs baseline (points)",
        limits.max_acc_regression,
        round(base_final["test_acc"] - final["test_acc"], 2),
        upper=True,
    )
    gate(
        "final size growth vs baseline %",
        limits.max_size_growth,
        round(100 * (final["bytes"] / base_final["bytes"] - 1), 2),
        upper=True,
    )
    if limits.max_latency_regression is not None:
        results += latency_vs_baseline(report, baseline, limits.max_latency_regression)
    return results


def _final_model(report: dict[str, Any]) -> dict[str, Any]:
    return next((m for m in report.get("models", []) if m["role"] == Role.FINAL), {})


@dataclass(frozen=True)
class Relative:
    """The final model's latency on a target as a ratio to the teacher's in the same run."""

    ratio: float
    noise: float  # relative half-width of the ratio's 95 % interval
    final_row: dict[str, Any]
    reference_row: dict[str, Any]


def relative_latency(report: dict[str, Any]) -> dict[str, Relative]:
    """Per target: the final model's fastest passed row over the teacher's FP32 row in the same
    runtime (else the teacher's fastest row there), with the ratio's relative uncertainty."""
    rows = report.get("latency", [])
    fp32 = [r for r in rows if r["precision"] == "fp32"]
    out: dict[str, Relative] = {}
    for target, roles in fastest_per_target({"latency": rows}).items():
        final, teacher = roles.get(Role.FINAL), roles.get(Role.TEACHER)
        if final is None or teacher is None:
            continue
        reference = fastest(fp32, Role.TEACHER, target, final["runtime"]) or teacher
        ratio, noise = row_ratio(final, reference)
        out[target] = Relative(ratio, noise, final, reference)
    return out


def latency_vs_baseline(
    report: dict[str, Any], baseline: dict[str, Any], tolerance_pct: float
) -> list[Result]:
    """Per target measured in both runs: the change of the final/teacher latency ratio, less
    its noise, against `tolerance_pct`."""
    now, before = relative_latency(report), relative_latency(baseline)
    results = []
    for target in now.keys() & before.keys():
        a, b = before[target], now[target]
        change = 100 * (b.ratio / a.ratio - 1)
        noise = 100 * math.hypot(a.noise, b.noise)
        beyond = max(0.0, change - noise)
        detail = (
            f"final/teacher latency ratio {a.ratio:.3f} → {b.ratio:.3f} ({change:+.1f} % ± "
            f"{noise:.1f} %; {b.final_row['runtime']} {b.final_row['precision']} over teacher "
            f"{b.reference_row['runtime']} {b.reference_row['precision']}), beyond the noise "
            f"{beyond:.1f} % ≤ {tolerance_pct:g} %"
        )
        results.append(Result(f"latency vs baseline on {target}", beyond <= tolerance_pct, detail))
    if not results:
        results.append(
            Result(
                "latency vs baseline",
                False,
                "no target has the final model and the teacher measured in both runs",
            )
        )
    return sorted(results, key=lambda r: r.name)


def markdown(results: list[Result], defaults: list[str], report_name: str) -> str:
    """A pull-request comment: verdict, then one row per limit."""
    failed = [r for r in results if not r.passed]
    lines = [
        f"### edgekd check: {report_name}: "
        + (f"**{len(failed)} of {len(results)} limits failed**" if failed else "all passed"),
        "",
        "| limit | result | detail |",
        "|---|---|---|",
        *(f"| {r.name} | {'pass' if r.passed else '**FAIL**'} | {r.detail} |" for r in results),
    ]
    if defaults:
        lines += ["", f"Defaults applied: {', '.join(defaults)} (docs/ci.md)."]
    return "\n".join(lines) + "\n"


def junit(results: list[Result], report_name: str) -> bytes:
    """JUnit XML: one test case per limit, a failure element for each that failed."""
    import xml.etree.ElementTree as ET

    failed = sum(not r.passed for r in results)
    suite = ET.Element(
        "testsuite", name="edgekd check", tests=str(len(results)), failures=str(failed)
    )
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=report_name, name=r.name)
        if r.passed:
            ET.SubElement(case, "system-out").text = r.detail
        else:
            ET.SubElement(case, "failure", message=r.detail)
    suites = ET.Element("testsuites")
    suites.append(suite)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)
