"""What the compression steps decided, for report.json's `steps` section and its readers: the INT8
ladder's rungs (accuracy and latency of each, the layers left in float and their cost, whether
KD-QAT ran and why) and each pruning step's decision (how much, by which criterion, measured
before and after, kept or not and why)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.artifacts import read_manifest


def section(run_dir: Path, stage_dirs: list[tuple[str, str]]) -> dict[str, Any]:
    """`{"ladder": {...} | None, "pruning": [{...}, ...]}` from the stages' manifests."""
    out: dict[str, Any] = {"ladder": None, "pruning": []}
    for name, dirname in stage_dirs:
        metrics = (read_manifest(run_dir / dirname) or {}).get("metrics", {})
        if "ladder" in metrics:
            out["ladder"] = {"stage": name, **metrics["ladder"]}
        if "pruning" in metrics:
            out["pruning"].append({"stage": name, **metrics["pruning"]})
    return out


def _ms(latency: dict[str, Any] | None) -> str:
    if not latency or latency.get("median_ms") is None:
        return "–"
    same = f" (graph of {latency['same_graph_as']})" if latency.get("same_graph_as") else ""
    return f"{latency['median_ms']:.4f} ± {latency.get('noise_pct', 0):.1f} %{same}"


def rung_rows(ladder: dict[str, Any]) -> list[dict[str, str]]:
    """One row per rung: its name, validation and test accuracy, drop and latency."""
    rows = []
    for rung in ladder["rungs"]:
        drop = rung.get("drop")
        rows.append(
            {
                "rung": rung["rung"],
                "val_acc": f"{rung['val_acc']:.2f}",
                "drop": "–" if drop is None else f"{drop:+.2f}",
                "test_acc": f"{rung['test_acc']:.2f}",
                "latency": _ms(rung.get("latency")),
            }
        )
    return rows


def ladder_notes(ladder: dict[str, Any]) -> list[str]:
    budget = ladder.get("budget_points")
    notes = [
        "accuracy budget: "
        + ("none" if budget is None else f"{budget:g} points on the validation split")
    ]
    if ladder.get("float_layers"):
        cost = ladder.get("float_cost_ms")
        notes.append(
            f"left in float: {', '.join(ladder['float_layers'])}"
            + ("" if cost is None else f" (cost {cost * 1000:+.1f} µs against all-INT8 PTQ)")
        )
    elif (ladder.get("fallback") or {}).get("kept") is False:
        notes.append(f"precision fallback tried and not kept: {ladder['fallback']['why']}")
    elif ladder.get("fallback"):
        notes.append("precision fallback tried; it did not beat PTQ, every layer stays INT8")
    if ladder.get("qat"):
        notes.append(
            f"KD-QAT {'ran' if ladder['qat']['run'] else 'skipped'}: {ladder['qat']['why']}"
        )
    if ladder.get("timing"):
        notes.append(f"rungs not timed: {ladder['timing']}")
    return notes


def pruned_amount(record: dict[str, Any]) -> str:
    """How much a prune record removed: `25 % of channels`, or `the MACs of 25 % of channels`
    where the sensitivity allocation removed that much elsewhere."""
    amount = f"{100 * record['ratio']:.0f} % of channels"
    return f"the MACs of {amount}" if record["allocation"] == "sensitivity" else amount


def pruning_line(step: dict[str, Any]) -> str:
    if "ratio" not in step:
        return f"{step['stage']}: not pruned: {step.get('why', '')}"
    head = (
        f"{step['stage']}: {pruned_amount(step)} ({step['allocation']} allocation, "
        f"{step['importance']} importance"
    )
    if step.get("search"):
        head += f", for a budget of {step['search']['budget_ms']} ms"
    line = f"{head}), timed as {step.get('timed_as', '?')}: {step.get('why', '')}"
    layers = {k: v for k, v in (step.get("layer_ratios") or {}).items() if v}
    if layers:
        line += "; per layer: " + ", ".join(f"{k} {100 * v:.0f} %" for k, v in layers.items())
    return line


def markdown(steps: dict[str, Any] | None) -> list[str]:
    if not steps:
        return []
    lines: list[str] = []
    ladder = steps.get("ladder")
    if ladder:
        lines += [
            "## INT8 ladder",
            "",
            "| rung | val acc % | drop (points) | test acc % | latency ms |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['rung']} | {r['val_acc']} | {r['drop']} | {r['test_acc']} | {r['latency']} |"
            for r in rung_rows(ladder)
        ]
        lines += ["", *(f"- {n}" for n in ladder_notes(ladder)), ""]
    if steps.get("pruning"):
        lines += ["## Pruning", ""]
        lines += [f"- {pruning_line(step)}" for step in steps["pruning"]]
        lines.append("")
    return lines


def warnings(steps: dict[str, Any] | None) -> list[str]:
    """Layers left in float, an INT8 model over its accuracy budget, pruning that did not pay."""
    if not steps:
        return []
    out = []
    ladder = steps.get("ladder")
    if ladder and ladder.get("float_layers"):
        out.append(f"{ladder['stage']}: layers left in float: {', '.join(ladder['float_layers'])}")
    if ladder and ladder.get("budget_points") is not None:
        last = ladder["rungs"][-1]
        if last.get("drop", 0) > ladder["budget_points"]:
            out.append(
                f"{ladder['stage']}: INT8 loses {last['drop']:.2f} validation points against "
                f"FP32, over the budget of {ladder['budget_points']:g}"
            )
    for step in steps.get("pruning", []):
        if not step.get("kept", True):
            out.append(f"{step['stage']}: pruning did not pay: {pruning_line(step)}")
    return out
