"""report.md: the same facts as report.json, as tables for people."""

from __future__ import annotations

from typing import Any

from edgekd.contracts import Role
from edgekd.report import search, steps


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "–"
    return format(value, spec) if spec else str(value)


def summary_table(summary: dict[str, Any]) -> list[str]:
    """Teacher vs final model: accuracy, size and latency, one row each."""
    lines = [
        "| | precision | test acc % | params | MACs | bytes on disk | ORT CPU median ms "
        "| fastest measured |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in (Role.TEACHER, Role.FINAL):
        row, best = summary[label], summary[label]["best"]
        best_text = (
            f"{best['median_ms']:.3f} ms ({best['runtime']}, {best['target']})" if best else "–"
        )
        lines.append(
            f"| {label} | {row['precision']} | {row['test_acc']:.2f} | "
            f"{_fmt(row['params'], ',')} | {_fmt(row['macs'], ',')} | {row['bytes']:,} | "
            f"{_fmt(row['onnxruntime_median_ms'], '.3f')} | {best_text} |"
        )
    return lines


def skipped_by_reason(rows: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """(target, reason, ["model precision runtime", ...]) of the rows not measured, one entry
    per target and reason: a target without a GPU is one line, not one per model × runtime."""
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row["status"] == "skipped":
            what = f"{row['model']} {row['precision']} {row['runtime']}"
            groups.setdefault((row["target"], row["reason"]), []).append(what)
    return [(target, reason, what) for (target, reason), what in groups.items()]


def latency_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every measured and failed row (★ marks the chosen row of its target and model), then the
    rows not measured, one line per target and reason."""
    lines = [
        "| target | model | precision | runtime | status | batch | threads | median ms | "
        "p90 ms | p99 ms | mean ± 95% ms | runs | check vs reference | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        head = f"| {row['target']} | {row['model']} | {row['precision']} | {row['runtime']} |"
        if row["status"] == "skipped":
            continue
        if row["status"] != "ok":
            lines.append(
                f"{head} {row['status']} | {row['batch']} | | | | | | | | {row['reason']} |"
            )
            continue
        check = row.get("check", {})
        verdict = "pass" if check.get("passed", True) else "FAIL"
        agreement = _fmt(check.get("top1_agreement"), ".1f")
        note = "★ chosen" if row.get("chosen") else ""
        if row.get("copies_included"):
            note = f"{note}; host↔device copies timed".lstrip("; ")
        lines.append(
            f"{head} ok | {row['batch']} | {row['threads']} | {row['median_ms']:.3f} | "
            f"{row['p90_ms']:.3f} | {row['p99_ms']:.3f} | {row['mean_ms']:.3f} ± "
            f"{row['ci95_ms']:.3f} | {row['iterations']} | {verdict}: top-1 {agreement}% vs "
            f"{check.get('reference', '–')} | {note} |"
        )
    skipped = skipped_by_reason(rows)
    if skipped:
        lines += ["", "Not measured:", ""]
        lines += [f"- {t}: {reason} ({', '.join(what)})" for t, reason, what in skipped]
    return lines


def chosen_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per target: the final model's chosen runtime × precision, and how it compares with the
    fastest FP32 row of the same student, so a reader sees whether INT8 paid off there."""
    lines: list[str] = []
    for target in dict.fromkeys(r["target"] for r in rows):
        chosen = [r for r in rows if r["target"] == target and r.get("chosen")]
        final = next((r for r in chosen if r["model"] == Role.FINAL), None)
        if final is None:
            continue
        fp32 = [
            r for r in chosen if r["model"] == Role.STUDENT_FP32 and r["batch"] == final["batch"]
        ]
        text = (
            f"- {target}: final model runs fastest as {final['precision']} in "
            f"{final['runtime']}, {final['median_ms']:.3f} ms (batch {final['batch']})"
        )
        if fp32:
            ratio = fp32[0]["median_ms"] / final["median_ms"]
            verdict = (
                "INT8 pays off here"
                if ratio >= 1
                else "the FP32 student is faster here; at small inputs per-operator cost, not "
                "arithmetic, sets the latency (docs/benchmarks/runtimes.md)"
            )
            text += (
                f"; the FP32 student's fastest is {fp32[0]['median_ms']:.3f} ms in "
                f"{fp32[0]['runtime']} ({fp32[0]['precision']}), ×{ratio:.2f}: {verdict}"
            )
        lines.append(text)
    return ["", "Chosen (fastest row that passed its check):", "", *lines] if lines else []


def render(report: dict[str, Any]) -> str:
    lines = [
        f"# edgekd report: {report['pipeline']['name']}",
        "",
        f"Pipeline `{report['pipeline']['file']}`, edgekd {report['edgekd_version']}, "
        f"{report['created_utc']}.  ",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
        f"{report['machine']['os']}. Total stage time {report['total_wall_s']} s.",
        "",
    ]
    summary = report["summary"]
    if summary:
        r = summary["ratios"]
        lines += ["## Teacher vs final model", "", *summary_table(summary)]
        lines += [
            "",
            f"Final / teacher: bytes ×{r['bytes']}, params ×{r['params']}, "
            f"onnxruntime latency ×{_fmt(r['onnxruntime_latency'])}, fastest final vs "
            f"teacher in onnxruntime ×{_fmt(r['best_latency_vs_teacher_onnxruntime'])}; "
            f"accuracy drop {summary['accuracy_drop_pp']} points.",
            "",
        ]
    lines += search.lines(report.get("search"))
    lines += steps.markdown(report.get("steps"))
    lines += [
        "## Stages",
        "",
        "| stage | wall s | test acc % | params | MACs | other |",
        "|---|---|---|---|---|---|",
    ]
    for stage in report["stages"]:
        m = dict(stage["metrics"])
        acc, params, macs = m.pop("test_acc", None), m.pop("params", None), m.pop("macs", None)
        other = ", ".join(f"{k} {v}" for k, v in m.items())
        lines.append(
            f"| {stage['stage']} | {_fmt(stage['wall_s'])} | {_fmt(acc)} | "
            f"{_fmt(params, ',')} | {_fmt(macs, ',')} | {other} |"
        )
    lines += [
        "",
        "## Exported models (accuracy by onnxruntime on the test split)",
        "",
        "| model | file | precision | test acc % | bytes | parity max abs diff | "
        "top-1 agreement % |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in report["models"]:
        parity = m["parity"] or {}  # none for a teacher given as ONNX: it is its own reference
        lines.append(
            f"| {m['role']} | {m['file']} | {m['precision']} | {m['test_acc']:.2f} | "
            f"{m['bytes']:,} | {_fmt(parity.get('max_abs_diff'), '.2e')} | "
            f"{_fmt(parity.get('top1_agreement'), '.2f')} |"
        )
    lines += ["", "## Latency", "", *latency_table(report["latency"])]
    lines += chosen_lines(report["latency"])
    lines += [
        "",
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]
    return "\n".join(lines)
