"""report.md: the same facts as report.json, as tables for people."""

from __future__ import annotations

from typing import Any


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
    for label in ("teacher", "final"):
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
    lines += [
        "",
        "## Latency",
        "",
        "| target | model | precision | runtime | status | batch | "
        "threads | median ms | p90 ms | p99 ms | mean ± 95% ms | runs | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["latency"]:
        if row["status"] == "ok":
            lines.append(
                f"| {row['target']} | {row['model']} | {row['precision']} | {row['runtime']} | "
                f"ok | {row['batch']} | {row['threads']} | {row['median_ms']:.3f} | "
                f"{row['p90_ms']:.3f} | {row['p99_ms']:.3f} | {row['mean_ms']:.3f} ± "
                f"{row['ci95_ms']:.3f} | {row['iterations']} | top-1 agreement "
                f"{row['top1_agreement']:.1f}% |"
            )
        else:
            lines.append(
                f"| {row['target']} | {row['model']} | {row['precision']} | "
                f"{row['runtime']} | {row['status']} | | | | | | | | {row['reason']} |"
            )
    lines += [
        "",
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        "",
    ]
    return "\n".join(lines)
