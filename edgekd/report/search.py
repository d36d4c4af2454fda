"""The report's search section: every trial, the chosen student, what the search cost, and after
bench the chosen student's predicted latency against the measured one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekd.artifacts import read_manifest


def section(
    run_dir: Path,
    stage_dirs: list[tuple[str, str]],
    final_row: Callable[[str, str], dict[str, Any] | None],
) -> dict[str, Any] | None:
    """report.json's `search`: the search stage's metrics, and the final model's measured row on
    the searched target and runtime (`final_row(target, runtime)`) beside the prediction."""
    names = [name for name, _ in stage_dirs]
    found = next((d for name, d in stage_dirs if name == "search"), None)
    if found is None:
        return None
    search = dict((read_manifest(run_dir / found) or {}).get("metrics", {}).get("search") or {})
    if not search:
        return None
    chosen = search["chosen"]
    final = final_row(search["target"], search["runtime"])
    pruned = "prune" in names[names.index("search") :]
    search["after_bench"] = {
        "predicted_ms": chosen["latency_ms"],
        "predicted_source": chosen["latency_source"],
        "final_measured_ms": final["median_ms"] if final else None,
        "final_precision": final["precision"] if final else None,
        "same_network": not pruned,
        "note": "the final model was pruned after the search, a smaller network than the one "
        "predicted"
        if pruned
        else "the final model is the searched student, trained",
    }
    return search


def lines(search: dict[str, Any] | None) -> list[str]:
    """report.md's search section."""
    if not search:
        return []
    chosen, bench, cost = search["chosen"], search["after_bench"], search["seconds"]
    out = [
        "## Search",
        "",
        f"{search['space_size']:,} students in the space; budget "
        f"{search.get('budget_rule') or str(search['budget_ms']) + ' ms'} on "
        f"{search['target']} ({search['runtime']}, {search['precision']}); predictor "
        f"{search['predictor']}; objective {search['objective']}; {len(search['trials'])} trials "
        f"(latency {cost['latency']} s, proxy training {cost['proxy_training']} s).",
        "",
        f"Chosen: trial {chosen['trial']}, {chosen['student']}, {chosen['params']:,} parameters, "
        f"{chosen['latency_ms']:.4f} ms ({chosen['latency_source']}), proxy val acc "
        f"{chosen['proxy_val_acc']:.2f} %; pre-flight: {chosen['preflight']}.",
    ]
    if bench["final_measured_ms"] is not None:
        out.append(
            f"After bench: predicted {bench['predicted_ms']:.4f} ms ({bench['predicted_source']}), "
            f"final model measured {bench['final_measured_ms']:.4f} ms "
            f"({bench['final_precision']}); {bench['note']}."
        )
    out += [f"- note: {note}" for note in search.get("notes", [])]
    out += [
        "",
        "| trial | student | params | MACs | latency ms | latency source | proxy val acc % | "
        "Pareto | outcome |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in search["trials"]:
        ms = f"{t['latency_ms']:.4f}" if t["latency_ms"] is not None else "–"
        acc = f"{t['proxy_val_acc']:.2f}" if t["proxy_val_acc"] is not None else "–"
        params = f"{t['params']:,}" if t["params"] is not None else "–"
        macs = f"{t['macs']:,}" if t["macs"] is not None else "–"
        out.append(
            f"| {t['trial']} | {t['student']} | {params} | {macs} | {ms} | "
            f"{t['latency_source'] or '–'} | {acc} | {'★' if t['pareto'] else ''} | "
            f"{t['outcome']} |"
        )
    return [*out, ""]
