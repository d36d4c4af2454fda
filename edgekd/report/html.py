"""report.html: one self-contained file (inline CSS and SVG, no network) for a person deciding
whether to ship: the trade-off first, then what each stage did, the pictures, the details.

Rendered with Jinja2 (autoescaping every value) from report.json alone, so `edgekd report
RUN_DIR` rebuilds it without rerunning anything.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment
from markupsafe import Markup

from edgekd.contracts import Role
from edgekd.report import plots, steps
from edgekd.report.build import fastest_per_target
from edgekd.report.markdown import skipped_by_reason

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>edgekd report: {{ r.pipeline.name }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ddd;
padding: .25em .6em; text-align: right; } th { background: #f4f4f4; } td:first-child,
th:first-child { text-align: left; } .warn { color: #8a4b00; } .ok { color: #1b6e20; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; max-width: 60em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; } .meta { color: #555; }
</style></head><body>
<h1>edgekd report: {{ r.pipeline.name }}</h1>
<p class="meta">Pipeline <code>{{ r.pipeline.file }}</code>, edgekd {{ r.edgekd_version }}
{%- if r.source %} (commit {{ r.source.commit[:12] }}{% if r.source.dirty %}, with uncommitted
changes{% endif %}){% endif %}, {{ r.created_utc }}. Total stage time {{ r.total_wall_s }} s.</p>

<h2>Summary</h2>
{% if summary %}
<table><tr><th></th><th>precision</th><th>test acc %</th><th>params</th><th>bytes</th>
<th>peak activations</th>{% for t in targets %}<th>{{ t }} ms</th>{% endfor %}</tr>
{% for row in summary %}<tr><td>{{ row.role }}</td><td>{{ row.precision }}</td>
<td>{{ "%.2f"|format(row.test_acc) }}</td><td>{{ num(row.params) }}</td>
<td>{{ size(row.bytes) }}</td><td>{{ size(row.peak) }}</td>
{% for t in targets %}<td>{{ latency(row.latency.get(t)) }}</td>{% endfor %}</tr>{% endfor %}
<tr><td>final ÷ teacher</td><td></td><td>{{ "%+.2f"|format(-r.summary.accuracy_drop_pp) }}
points</td><td>×{{ r.summary.ratios.params }}</td><td>×{{ r.summary.ratios.bytes }}</td>
<td>{{ ratio(summary[1].peak, summary[0].peak) }}</td>
{% for t in targets %}<td>{{ speedup(summary[0].latency.get(t), summary[1].latency.get(t)) }}
</td>{% endfor %}</tr></table>
<p class="meta">Latency: batch 1, each model's fastest runtime on the target that passed its
output check (the runtime and precision under each figure). Peak activations: the largest set
of tensors alive at once in the ONNX graph, Q/DQ pairs fused (report/memory.py).</p>
{% else %}<p>No teacher/final pair was exported: nothing to compare.</p>{% endif %}

<h2>Warnings</h2>
{% if warnings %}<ul>{% for w in warnings %}<li class="warn">{{ w }}</li>{% endfor %}</ul>
{% else %}<p class="ok">None.</p>{% endif %}

<h2>Stage by stage</h2>
<table><tr><th>stage</th><th>wall s</th><th>test acc %</th><th>params</th><th>MACs</th>
<th>bytes</th><th>other</th></tr>
{% for s in r.stages %}<tr><td>{{ s.stage }}</td><td>{{ num(s.wall_s) }}</td>
<td>{{ num(s.metrics.get("test_acc")) }}</td><td>{{ num(s.metrics.get("params")) }}</td>
<td>{{ num(s.metrics.get("macs")) }}</td><td>{{ size(s.metrics.get("bytes")) }}</td>
<td>{{ other(s.metrics) }}</td></tr>{% endfor %}</table>

{% if ladder %}<h2>INT8 ladder</h2>
<table><tr><th>rung</th><th>val acc %</th><th>drop (points)</th><th>test acc %</th>
<th>latency ms</th></tr>
{% for row in rungs %}<tr><td>{{ row.rung }}</td><td>{{ row.val_acc }}</td><td>{{ row.drop }}</td>
<td>{{ row.test_acc }}</td><td>{{ row.latency }}</td></tr>{% endfor %}</table>
<ul>{% for n in ladder_notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
{% if pruning %}<h2>Pruning</h2>
<ul>{% for line in pruning %}<li>{{ line }}</li>{% endfor %}</ul>{% endif %}

<h2>Pictures</h2>
{% for fig in figures %}<figure>{{ fig.svg }}<figcaption>{{ fig.caption }}</figcaption></figure>
{% else %}<p>Nothing measured to draw.</p>{% endfor %}

{% if r.search %}<h2>Search</h2>
<p>{{ "{:,}".format(r.search.space_size) }} students in the space, budget
{{ r.search.budget_rule or (r.search.budget_ms ~ " ms") }} on {{ r.search.target }}
({{ r.search.runtime }}, {{ r.search.precision }}), predictor {{ r.search.predictor }},
{{ r.search.trials|length }} trials. Chosen: trial {{ r.search.chosen.trial }},
{{ r.search.chosen.student }}.</p>
<details><summary>Every trial</summary><table><tr><th>trial</th><th>student</th>
<th>latency ms</th><th>source</th><th>proxy val acc %</th><th>outcome</th></tr>
{% for t in r.search.trials %}<tr><td>{{ t.trial }}</td><td>{{ t.student }}</td>
<td>{{ num(t.latency_ms) }}</td><td>{{ t.latency_source or "–" }}</td>
<td>{{ num(t.proxy_val_acc) }}</td><td>{{ t.outcome }}</td></tr>{% endfor %}
</table></details>{% endif %}

<h2>Measured latency</h2>
<table><tr><th>target</th><th>model</th><th>runtime</th><th>precision</th><th>median ms</th>
<th>p90 ms</th><th>p99 ms</th><th>mean ± 95 %</th><th>runs</th><th>check</th></tr>
{% for row in measured %}<tr><td>{{ row.target }}</td><td>{{ row.model }}</td>
<td>{{ row.runtime }}{% if row.chosen %} ★{% endif %}</td><td>{{ row.precision }}</td>
<td>{{ "%.4f"|format(row.median_ms) }}</td><td>{{ "%.4f"|format(row.p90_ms) }}</td>
<td>{{ "%.4f"|format(row.p99_ms) }}</td>
<td>{{ "%.4f ± %.4f"|format(row.mean_ms, row.ci95_ms) }}</td><td>{{ row.iterations }}</td>
<td>{{ check(row) }}</td></tr>{% endfor %}</table>
{% if skipped %}<p>Not measured (one line per target and reason):</p><ul>
{% for target, reason, what in skipped %}<li>{{ target }}: {{ reason }}
({{ what|join(", ") }})</li>{% endfor %}</ul>{% endif %}

<h2>Settings: the pipeline as run</h2>
{% if r.pipeline.yaml %}<pre>{{ r.pipeline.yaml }}</pre>{% else %}
<p>The YAML was not kept in this report.json.</p>{% endif %}

<h2>Environment</h2>
<p>{{ r.machine.cpu }}, {{ r.machine.cores }} cores, {{ r.machine.os }}.</p>
<p class="meta">{% for k, v in r.versions.items() %}{{ k }} {{ v }}{% if not loop.last %},
{% endif %}{% endfor %}</p>
</body></html>
"""

FIGURES = (
    (
        plots.accuracy_vs_latency,
        "Test accuracy against measured latency, each model at its fastest runtime on each "
        "target; the dashed line is the Pareto front.",
    ),
    (
        plots.search_trials,
        "Search trials: proxy validation accuracy (short KD training, validation split) against "
        "the latency their predictor gave; the chosen trial circled.",
    ),
    (
        plots.predicted_vs_measured,
        "The search's predicted latency of its chosen student against the final model's "
        "measured latency on the same target and runtime.",
    ),
    (
        plots.latency_spread,
        "Every measured row: median with the 95 % interval of the mean, p90 and p99.",
    ),
    (plots.per_class_accuracy, "Test accuracy per class, teacher and final model."),
    (plots.confusion_matrix, "The final model's confusion matrix on the test split."),
)


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _size(value: int | None) -> str:
    if value is None:
        return "–"
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value} B"


def _latency(row: dict[str, Any] | None) -> Markup:
    if row is None:
        return Markup("–")
    return Markup("{:.4f}<br><small>{} {}</small>").format(
        row["median_ms"], row["runtime"], row["precision"]
    )


def _ratio(a: float | None, b: float | None) -> str:
    return f"×{a / b:.3f}" if a is not None and b else "–"


def _speedup(teacher: dict[str, Any] | None, final: dict[str, Any] | None) -> str:
    if teacher is None or final is None:
        return "–"
    return f"{teacher['median_ms'] / final['median_ms']:.2f}× faster"


def _other(metrics: dict[str, Any]) -> str:
    shown = {"test_acc", "params", "macs", "bytes"}
    return ", ".join(f"{k} {v}" for k, v in metrics.items() if k not in shown)


def _check(row: dict[str, Any]) -> str:
    check = row.get("check") or {}
    if not check:
        return "–"
    verdict = "pass" if check.get("passed", True) else "FAIL"
    return f"{verdict}: top-1 {check.get('top1_agreement', 0):.1f} % vs {check.get('reference')}"


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Teacher and final model: their numbers, and their fastest row on each target."""
    fastest = fastest_per_target(report)
    rows = []
    for role in (Role.TEACHER, Role.FINAL):
        s = report["summary"][role]
        rows.append(
            {
                "role": role.value,
                "precision": s["precision"],
                "test_acc": s["test_acc"],
                "params": s["params"],
                "bytes": s["bytes"],
                "peak": s.get("peak_activation_bytes"),
                "latency": {t: roles[role] for t, roles in fastest.items() if role in roles},
            }
        )
    return rows


def warnings(report: dict[str, Any]) -> list[str]:
    """What a person should know before shipping: parity drift, failed rows, targets not
    measured (one line per target and reason), and an FP32 student faster than the final
    model on a target."""
    out = []
    for model in report["models"]:
        parity = model.get("parity") or {}
        if parity and parity.get("top1_agreement", 100.0) < 100.0:
            out.append(
                f"{model['file']}: onnxruntime agrees with PyTorch on the top-1 class for "
                f"{parity['top1_agreement']:.2f} % of {parity['images']} test images "
                f"(max |logit difference| {parity['max_abs_diff']:.3g})"
            )
    for row in report["latency"]:
        if row["status"] == "failed":
            out.append(
                f"{row['target']}: {row['model']} {row['precision']} in {row['runtime']} "
                f"failed: {row['reason']}"
            )
        elif row["status"] == "ok" and not row.get("check", {}).get("passed", True):
            out.append(
                f"{row['target']}: {row['model']} {row['precision']} in {row['runtime']} "
                "failed its output check and is not used"
            )
    for target, reason, what in skipped_by_reason(report["latency"]):
        out.append(f"{target}: not measured ({len(what)} rows): {reason}")
    for target, roles in fastest_per_target(report).items():
        final, fp32 = roles.get(Role.FINAL), roles.get(Role.STUDENT_FP32)
        if final and fp32 and fp32["median_ms"] < final["median_ms"]:
            out.append(
                f"{target}: the FP32 student ({fp32['median_ms']:.4f} ms, {fp32['runtime']}) is "
                f"faster than the final model ({final['median_ms']:.4f} ms, "
                f"{final['runtime']} {final['precision']}): compression did not pay in latency "
                "there"
            )
    out += [f"search: {note}" for note in (report.get("search") or {}).get("notes", [])]
    return out + steps.warnings(report.get("steps"))


def render_html(report: dict[str, Any]) -> str:
    env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(
        num=_num,
        size=_size,
        latency=_latency,
        ratio=_ratio,
        speedup=_speedup,
        other=_other,
        check=_check,
    )
    figures = []
    for draw, caption in FIGURES:
        svg = draw(report)
        if svg is not None:
            body = svg[svg.index("<svg") :]  # drop the XML prolog and doctype inside HTML
            figures.append({"svg": Markup(body), "caption": caption})
    summary = summary_rows(report) if report.get("summary") else []
    targets = sorted({t for row in summary for t in row["latency"]})
    taken = report.get("steps") or {}
    ladder = taken.get("ladder")
    return env.from_string(TEMPLATE).render(
        r=report,
        ladder=ladder,
        rungs=steps.rung_rows(ladder) if ladder else [],
        ladder_notes=steps.ladder_notes(ladder) if ladder else [],
        pruning=[steps.pruning_line(p) for p in taken.get("pruning", [])],
        summary=summary,
        targets=targets,
        warnings=warnings(report),
        figures=figures,
        measured=[row for row in report["latency"] if row["status"] == "ok"],
        skipped=skipped_by_reason(report["latency"]),
    )
