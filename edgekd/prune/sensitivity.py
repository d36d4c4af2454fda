"""Per-layer pruning ratios from measured sensitivity (`allocation: sensitivity`).

Each prunable group is pruned alone at a few ratios (`LEVELS`) on a copy of the trained student,
its BatchNorm statistics re-estimated (EagleEye's adaptive BN, Li et al., ECCV 2020: the accuracy
right after it ranks pruned candidates as their accuracy after fine-tuning does), and scored on
validation images: how much the cross-entropy rises (smoother than top-1 on a few thousand
images; top-1 is recorded beside it) and how many MACs it saves. This is the sensitivity
analysis of Li et al. (ICLR 2017) with MACs as the latency predictor (the one that ranked this
project's students best on this CPU, docs/benchmarks/search.md).

To remove a given number of MACs, `allocate` then picks per group the level that costs the least
loss per MAC saved, greedily (a multiple-choice knapsack; rises are assumed to add up across
groups, as in the sensitivity analyses of Li et al. and Distiller). The greedy is a few lines
over a table of at most `len(LEVELS)` options per group; it is not a search a library would do
better (Optuna would sample the same table at random). The amount itself is then set by
measuring latency (prune/budget.py), so the MAC predictor only decides where, never how much.

Measured against the uniform ratio at the same measured latency: docs/benchmarks/pruning.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

LEVELS = (0.25, 0.5, 0.75)  # the share of one group's channels each profile prunes
PROFILE_IMAGES = 2000  # validation images each profiled copy is scored on
RECALIBRATION_IMAGES = 1024  # training images re-estimating each copy's BatchNorm statistics


@dataclass(frozen=True)
class Option:
    """One group pruned alone at `ratio`: MACs saved, and what it cost on validation images."""

    ratio: float
    saved_macs: int
    loss_rise: float  # cross-entropy rise over the unpruned student's (recalibrated likewise)
    acc_drop: float  # top-1 points lost, recorded beside the loss


Table = dict[str, list[Option]]


def profile(
    groups: list[str],
    pruned: Callable[[dict[str, float]], nn.Module],
    score: Callable[[nn.Module], tuple[float, float]],
    macs: Callable[[nn.Module], int],
    levels: tuple[float, ...] = LEVELS,
) -> tuple[Table, dict[str, float]]:
    """The options of every group (by its root layer's name): `pruned(ratios)` prunes a copy of
    the student with those per-group ratios (BatchNorm recalibrated), `score(model)` gives its
    (cross-entropy, top-1 %) on validation images, `macs(model)` its MACs. Levels that prune no
    more than a lower one (channel counts are rounded) are left out. Returns the table and the
    unpruned student's score (the `ratios` of zero)."""
    nothing = dict.fromkeys(groups, 0.0)
    base = pruned(nothing)
    base_loss, base_acc = score(base)
    base_macs = macs(base)
    table: Table = {}
    for group in groups:
        options: list[Option] = []
        for level in levels:
            model = pruned(nothing | {group: level})
            saved = base_macs - macs(model)
            if saved <= (options[-1].saved_macs if options else 0):
                continue
            loss, acc = score(model)
            options.append(Option(level, saved, loss - base_loss, base_acc - acc))
        table[group] = options
    return table, {"loss": base_loss, "acc": base_acc, "macs": float(base_macs)}


def allocate(table: Table, saving: float) -> dict[str, float]:
    """Per-group ratios saving at least `saving` MACs (by the table's sums) at the least summed
    loss rise: repeatedly the step, to any higher level of any group, with the smallest rise
    per MAC it adds (a rise below zero counts as zero). Every group is named; 0.0 where
    nothing is pruned. Saves less when the table holds no more."""
    level = dict.fromkeys(table, -1)
    saved = 0.0

    def at(group: str) -> tuple[float, float]:
        index = level[group]
        if index < 0:
            return 0.0, 0.0
        option = table[group][index]
        return float(option.saved_macs), option.loss_rise

    while saved < saving:
        best: tuple[float, str, int] | None = None
        for group, options in table.items():
            now_saved, now_rise = at(group)
            for index in range(level[group] + 1, len(options)):
                gain = options[index].saved_macs - now_saved
                if gain <= 0:
                    continue
                price = max(options[index].loss_rise - now_rise, 0.0) / gain
                if best is None or price < best[0]:
                    best = (price, group, index)
        if best is None:
            break
        _, group, index = best
        saved += table[group][index].saved_macs - at(group)[0]
        level[group] = index
    return {g: table[g][i].ratio if i >= 0 else 0.0 for g, i in level.items()}


def to_json(table: Table) -> dict[str, list[dict[str, float]]]:
    return {
        group: [{k: round(v, 4) for k, v in asdict(o).items()} for o in options]
        for group, options in table.items()
    }
