"""The report's pictures, drawn by matplotlib as SVG text to embed in report.html.

Each function takes report.json's content and returns one SVG document (a string), or None when
the run has nothing to draw for it (no measured row, no search stage, no confusion matrix). The
SVGs have no dates and fixed element ids (`svg.hashsalt`), so a report rebuilt from the same
report.json is the same file.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from edgekd.contracts import Role
from edgekd.report.build import fastest_per_target

ROLE_COLOURS: dict[str, str] = {
    Role.TEACHER: "#1f77b4",
    Role.STUDENT_FP32: "#ff7f0e",
    Role.FINAL: "#2ca02c",
}
plt.rcParams.update({"svg.hashsalt": "edgekd", "font.size": 9, "figure.dpi": 100})


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return out.getvalue()


def _log_x(ax: Any) -> None:
    """A log latency axis labelled in plain numbers (0.2, not 2×10⁻¹)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=6)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both latency (lower) and accuracy (higher), by
    latency."""
    front: list[tuple[float, float]] = []
    for ms, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((ms, acc))
    return front


def accuracy_vs_latency(report: dict[str, Any]) -> str | None:
    """Test accuracy against measured latency of every exported model, one panel per target
    with a measured row, each model at its fastest runtime there; the Pareto front joined."""
    fastest = fastest_per_target(report)
    accuracy = {m["role"]: m["test_acc"] for m in report["models"]}
    targets = [t for t, roles in fastest.items() if any(r in accuracy for r in roles)]
    if not targets:
        return None
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.2), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        points = []
        for role, row in fastest[target].items():
            if role not in accuracy:
                continue
            point = (row["median_ms"], accuracy[role])
            points.append(point)
            ax.scatter(*point, color=ROLE_COLOURS.get(role, "grey"), zorder=3)
            ax.annotate(
                f"{role}\n{row['runtime']} {row['precision']}",
                point,
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=7,
            )
        front = pareto(points)
        ax.plot(*zip(*front, strict=True), color="grey", linestyle="--", linewidth=1, zorder=2)
        _log_x(ax)
        ax.set_title(f"{target} (batch 1)")
        ax.set_xlabel("median latency, ms (log)")
        ax.set_ylabel("test accuracy, %")
        ax.grid(True, alpha=0.3)
    return _svg(fig)


def search_trials(report: dict[str, Any]) -> str | None:
    """Every search trial that trained: proxy validation accuracy against its latency (as its
    predictor gave it), the Pareto trials, the chosen one and the budget."""
    search = report.get("search")
    trials = [
        t
        for t in (search or {}).get("trials", [])
        if t.get("latency_ms") is not None and t.get("proxy_val_acc") is not None
    ]
    if not search or not trials:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    front = [t for t in trials if t.get("pareto")]
    rest = [t for t in trials if not t.get("pareto")]
    ax.scatter(
        [t["latency_ms"] for t in rest],
        [t["proxy_val_acc"] for t in rest],
        color="#9e9e9e",
        label="trial",
        zorder=2,
    )
    if front:
        front = sorted(front, key=lambda t: t["latency_ms"])
        ax.plot(
            [t["latency_ms"] for t in front],
            [t["proxy_val_acc"] for t in front],
            "o--",
            color="#d62728",
            label="Pareto front",
            zorder=3,
        )
    chosen = search["chosen"]
    ax.scatter(
        chosen["latency_ms"],
        chosen["proxy_val_acc"],
        s=120,
        facecolors="none",
        edgecolors="black",
        label=f"chosen (trial {chosen['trial']})",
        zorder=4,
    )
    if search.get("budget_ms"):
        ax.axvline(search["budget_ms"], color="black", linewidth=1, label="budget")
    sources = sorted({t.get("latency_source") or "?" for t in trials})
    ax.set_xlabel(f"latency, ms ({'; '.join(sources)})")
    ax.set_ylabel("proxy validation accuracy, %")
    ax.set_title(f"search on {search['target']}: {len(trials)} trials")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _svg(fig)


def latency_spread(report: dict[str, Any]) -> str | None:
    """Each measured row's median (bar) with its p90 and p99 (marks) and the 95 % interval of
    the mean: how far a single run's time can stray from the figure the report quotes."""
    rows = [r for r in report["latency"] if r["status"] == "ok"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(rows) + 1.0))
    labels = [f"{r['target']} · {r['model']} · {r['runtime']} {r['precision']}" for r in rows]
    y = range(len(rows))
    ax.barh(
        y,
        [r["median_ms"] for r in rows],
        xerr=[r["ci95_ms"] for r in rows],
        color=[ROLE_COLOURS.get(r["model"], "grey") for r in rows],
        alpha=0.8,
    )
    ax.scatter([r["p90_ms"] for r in rows], y, marker="|", s=80, color="black", label="p90")
    ax.scatter([r["p99_ms"] for r in rows], y, marker="x", s=20, color="black", label="p99")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    _log_x(ax)
    ax.set_xlabel("ms (log): median ± 95 % interval of the mean; p90 |, p99 ×")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig)


def predicted_vs_measured(report: dict[str, Any]) -> str | None:
    """The search's predicted latency of its chosen student against the final model's
    measured one on the same target and runtime."""
    bench = ((report.get("search") or {}).get("after_bench")) or {}
    if bench.get("final_measured_ms") is None:
        return None
    fig, ax = plt.subplots(figsize=(4.0, 2.2))
    values = [bench["predicted_ms"], bench["final_measured_ms"]]
    names = [f"predicted\n({bench['predicted_source']})", "measured\n(final model)"]
    ax.barh(names, values, color=["#9467bd", "#2ca02c"])
    for i, v in enumerate(values):
        ax.annotate(f"{v:.4f} ms", (v, i), xytext=(3, -3), textcoords="offset points")
    ax.invert_yaxis()
    ax.set_xlabel("ms")
    ax.set_title(bench.get("note", ""), fontsize=7)
    return _svg(fig)


def _per_class(confusion: list[list[int]]) -> list[float]:
    return [100 * row[i] / max(sum(row), 1) for i, row in enumerate(confusion)]


def per_class_accuracy(report: dict[str, Any]) -> str | None:
    """Accuracy on each class of the test split, teacher beside final model."""
    classes = report.get("classes") or []
    by_role = {m["role"]: m.get("confusion") for m in report["models"]}
    roles = [r for r in (Role.TEACHER, Role.FINAL) if by_role.get(r)]
    if not classes or not roles:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(classes)), 3.0))
    width = 0.8 / len(roles)
    for i, role in enumerate(roles):
        confusion = by_role[role]
        assert confusion is not None
        xs = [c + (i - (len(roles) - 1) / 2) * width for c in range(len(classes))]
        ax.bar(xs, _per_class(confusion), width, label=role, color=ROLE_COLOURS[role])
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("test accuracy, %")
    low = min(min(_per_class(c)) for c in (by_role[r] for r in roles) if c is not None)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    return _svg(fig)


def confusion_matrix(report: dict[str, Any]) -> str | None:
    """The final model's confusion matrix on the test split (rows true, columns predicted),
    coloured by the share of each true class."""
    classes = report.get("classes") or []
    final = next((m for m in report["models"] if m["role"] == Role.FINAL), None)
    if not classes or final is None or not final.get("confusion"):
        return None
    counts = final["confusion"]
    shares = [[v / max(sum(row), 1) for v in row] for row in counts]
    size = max(3.5, 0.45 * len(classes) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 20:
        for i, row in enumerate(counts):
            for j, v in enumerate(row):
                colour = "white" if shares[i][j] > 0.5 else "black"
                ax.text(j, i, str(v), ha="center", va="center", fontsize=6, color=colour)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"final model ({final['precision']}), {final['test_images']:,} test images")
    return _svg(fig)
