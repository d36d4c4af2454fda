"""`edgekd search PIPELINE --dry-run`: the space's size, the range of its students' sizes, and
the predicted latency range, without training or timing anything (and without torch)."""

from __future__ import annotations

import itertools
from typing import Any

from edgekd.plan import Plan
from edgekd.search.cost import cost
from edgekd.search.predict import roofline_ms
from edgekd.search.space import Student
from edgekd.search.structural import Space

MAX_LISTED = 5_000  # larger spaces are summarised from a seeded sample of this many students


def students(space: Space, limit: int = MAX_LISTED) -> tuple[list[Student], bool]:
    """Every student of the space, or a seeded sample of `limit` of them (and which)."""
    choices = space.params()
    names = list(choices)
    if space.size <= limit:
        combos = itertools.product(*choices.values())
        return [space.candidate(dict(zip(names, combo, strict=True))) for combo in combos], True
    return list(space.sample(limit, seed=0)), False


def data_shape(plan: Plan) -> tuple[int, int]:
    """Input channels and classes, from the data section alone (no images are loaded)."""
    data = plan.config.data
    if data.dataset == "fashion-mnist":
        return 1, 10
    root = plan.resolve(data.root) / "train" if data.root else None
    classes = sum(p.is_dir() for p in root.iterdir()) if root and root.is_dir() else 0
    return (1 if data.grayscale else 3), classes or 10


def _range(values: list[float], fmt: str) -> str:
    return f"{format(min(values), fmt)} – {format(max(values), fmt)}"


def summary(plan: Plan) -> str:
    from edgekd.search.config import bound_space, precision_for, target_profile

    plans = [v for _, v in plan.variants] or [plan]  # a search over several targets: each
    specs = [s for p in plans for s in p.stages if s.name == "search"]
    if not specs:
        return f"{plan.path}: no search stage\n"
    shape = data_shape(plan)
    lines = []
    for spec in specs:
        cfg: Any = spec.cfg
        space = bound_space(plan, cfg)
        target = target_profile(plan, cfg)
        precision = precision_for(cfg, target)
        runtime = cfg.runtime or target.runtimes[0]
        found, complete = students(space)
        sizes = [cost(c, *shape) for c in found]
        counted = f"all {len(found):,}" if complete else f"a seeded sample of {len(found):,}"
        lines += [
            f"stage {spec.index} (search): {space.size:,} students in the space ({space.family})",
            f"  parameters {_range([s.params for s in sizes], ',')}, "
            f"MACs {_range([s.macs for s in sizes], ',')} ({counted})",
            f"  budget {cfg.budget_rule()} on {target.name} ({runtime}, {precision}); "
            f"predictor: {cfg.predictor}; {cfg.trials} trials",
        ]
        peak = target.peak
        if peak.roofline_ready:
            predicted = [roofline_ms(c, peak, precision, shape) for c in found]
            within = ""
            if cfg.latency_budget_ms is not None:
                fits = sum(ms <= cfg.latency_budget_ms for ms in predicted)
                within = f"; {fits / len(predicted):.0%} within the budget"
            lines.append(
                f"  roofline: {_range(predicted, '.4f')} ms, predicted (roofline), a lower "
                f"bound{within}"
            )
        else:
            lines.append(f"  roofline: not available ({target.name} has no `peak:` figures)")
        smallest = found[min(range(len(found)), key=lambda i: sizes[i].macs)]
        lines.append(
            f"  measured: each trial's student is exported and timed on {target.name} during "
            f"`edgekd run`; smallest by MACs: {smallest.describe()}"
        )
    return "\n".join(lines) + "\n"
