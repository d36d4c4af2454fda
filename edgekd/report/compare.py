"""`edgekd report A B`: two runs side by side, the numbers that changed first."""

from __future__ import annotations

from typing import Any

from edgekd.contracts import Role
from edgekd.report.build import fastest_per_target

# (what, higher is better) of the numbers compared; None: neither (a count, a time to run)
BETTER_HIGH = {"test_acc": True, "params": False, "bytes": False, "peak_activation_bytes": False}


def numbers(report: dict[str, Any]) -> dict[str, tuple[float | int | None, bool | None]]:
    """Every comparable number of a report: name → (value, whether higher is better)."""
    out: dict[str, tuple[float | int | None, bool | None]] = {}
    summary = report.get("summary") or {}
    for role in (Role.TEACHER, Role.FINAL):
        for key, high in BETTER_HIGH.items():
            if role in summary:
                out[f"{role} {key}"] = (summary[role].get(key), high)
    for target, roles in fastest_per_target(report).items():
        for role in (Role.TEACHER, Role.STUDENT_FP32, Role.FINAL):
            if role in roles:
                row = roles[role]
                out[f"{role} latency ms on {target} ({row['runtime']} {row['precision']})"] = (
                    row["median_ms"],
                    False,
                )
    for stage in report.get("stages", []):
        for key, value in stage["metrics"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{stage['dir']} {key}"] = (value, BETTER_HIGH.get(key))
        out[f"{stage['dir']} wall s"] = (stage.get("wall_s"), None)
    return out


def _change(a: Any, b: Any, high: bool | None) -> tuple[str, bool]:
    if a is None or b is None:
        return ("only in one run" if (a is None) != (b is None) else "–"), a != b
    if a == b:
        return "same", False
    delta = b - a
    text = f"{delta:+,.4g}" + (f" ({delta / a:+.1%})" if a else "")
    if high is not None:
        text += ", better" if (delta > 0) == high else ", worse"
    return text, True


def compare(a: dict[str, Any], b: dict[str, Any], a_name: str, b_name: str) -> list[str]:
    """Markdown lines: the numbers that differ, then those that are the same."""
    left, right = numbers(a), numbers(b)
    changed: list[str] = []
    same: list[str] = []
    for key in dict.fromkeys([*left, *right]):
        va, high = left.get(key, (None, None))
        vb, high_b = right.get(key, (None, None))
        text, differs = _change(va, vb, high if high is not None else high_b)
        line = f"| {key} | {_fmt(va)} | {_fmt(vb)} | {text} |"
        (changed if differs else same).append(line)
    head = ["| number | A | B | B − A |", "|---|---|---|---|"]
    lines = [
        f"# {a['pipeline']['name']} (A) vs {b['pipeline']['name']} (B)",
        "",
        f"A: {a_name}, {a.get('created_utc', '?')}, edgekd {a.get('edgekd_version', '?')}",
        f"B: {b_name}, {b.get('created_utc', '?')}, edgekd {b.get('edgekd_version', '?')}",
        "",
        f"## Changed ({len(changed)})",
        "",
        *(head + changed if changed else ["Nothing changed."]),
        "",
        f"## Same ({len(same)})",
        "",
        *(head + same if same else ["–"]),
        "",
    ]
    if a.get("machine") != b.get("machine"):
        lines.insert(
            5, "Measured on different machines: latency differences are not the models' alone."
        )
    return lines


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:,.4g}" if isinstance(value, float) else f"{value:,}"
