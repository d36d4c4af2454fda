"""Pruning that must pay in measured latency: the search for the pruning amount that meets a
latency budget on a target, and the check that keeps a pruning step only when the exported model
got measurably faster.

Per-layer ratios come from ranking channels across layers by importance per MAC
(`prune.depgraph.allocate`): MACs are the latency predictor that ranked this project's
students best on this CPU (Spearman 0.84 over 32 students, docs/benchmarks/search.md; the
lookup table and roofline ranked worse), and the amount is then set by measurement, not by the
predictor: each probe prunes a copy, exports it as the final model ships (INT8 with the student's
float layers kept float) and times it beside the unpruned model, interleaved in fresh processes
(edgekd/latency.py). The probes bracket the budget and interpolate (regula falsi on measured
latency, which falls as the ratio grows); the least-pruned probe within the budget's noise wins.
Timing beside the unpruned model each time lets a machine that drifts between probes be
corrected: every probe's latency is scaled by how the reference moved since the first probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from edgekd.latency import Timed, speedup

MAX_RATIO = 0.75  # the most of all channels a search may remove
FIRST_GUESS = (0.05, 0.6)  # the first probe's ratio is clamped to this range
CLOSE = 0.05  # a probe this close under the budget (relative) ends the search
RETIMES = 2  # further timings of a pruning step that looked faster, but within the noise


@dataclass
class Probe:
    ratio: float
    latency_ms: float  # drift-corrected (see the module docstring)
    measured_ms: float
    reference_ms: float
    noise: float


@dataclass
class Search:
    budget_ms: float
    reference_ms: float
    probes: list[Probe]
    ratio: float | None  # the least-pruned probe within the budget, or None

    def to_json(self) -> dict[str, object]:
        return {
            "budget_ms": self.budget_ms,
            "unpruned_ms": round(self.reference_ms, 4),
            "probes": [{k: round(v, 4) for k, v in asdict(p).items()} for p in self.probes],
            "ratio": None if self.ratio is None else round(self.ratio, 4),
        }

    def within(self, probe: Probe) -> bool:
        return probe.latency_ms <= self.budget_ms * (1 + probe.noise)


def first_guess(reference_ms: float, budget_ms: float) -> float:
    """Latency proportional to MACs and MACs to the square of the channels kept: 1 − √(B/L₀)."""
    lo, hi = FIRST_GUESS
    return min(max(1 - math.sqrt(budget_ms / reference_ms), lo), hi)


def search_ratio(
    measure: Callable[[float], tuple[Timed, Timed]],
    reference: Timed,
    budget_ms: float,
    max_probes: int,
) -> Search:
    """Find the least global pruning ratio whose measured latency meets `budget_ms`.
    `measure(ratio)`: (the unpruned model, the pruned copy) timed together; `reference`: the
    unpruned model's first timing."""
    assert reference.median_ms is not None
    base = reference.median_ms
    found = Search(budget_ms, base, [], None)
    slow: tuple[float, float] = (0.0, base)  # the most-pruned probe still over the budget
    fast: tuple[float, float] | None = None  # the least-pruned probe under it
    ratio = first_guess(base, budget_ms)
    for _ in range(max_probes):
        ref, got = measure(ratio)
        if ref.median_ms is None or got.median_ms is None:
            break
        drift = base / ref.median_ms
        probe = Probe(ratio, got.median_ms * drift, got.median_ms, ref.median_ms, got.noise)
        found.probes.append(probe)
        if found.within(probe):
            if found.ratio is None or ratio < found.ratio:
                found.ratio = ratio
            fast = (ratio, probe.latency_ms)
            if probe.latency_ms >= budget_ms * (1 - max(CLOSE, probe.noise)):
                break
        else:
            slow = (ratio, probe.latency_ms)
        following = _next_ratio(slow, fast, budget_ms)
        if following is None or any(abs(following - p.ratio) < 0.01 for p in found.probes):
            break
        ratio = following
    return found


def _next_ratio(
    slow: tuple[float, float], fast: tuple[float, float] | None, budget_ms: float
) -> float | None:
    """Interpolate between the bracketing probes (or extrapolate from the slow side along the
    line from the unpruned model); None when the search cannot go further."""
    if fast is not None:
        (r0, l0), (r1, l1) = slow, fast
        if l0 == l1:
            return (r0 + r1) / 2
        return r0 + (l0 - budget_ms) * (r1 - r0) / (l0 - l1)
    r0, l0 = slow
    if r0 >= MAX_RATIO:
        return None  # the most the search may prune is still too slow
    return min(MAX_RATIO, max(r0 + 0.05, r0 * 1.5))


def settle(
    measure: Callable[[int], tuple[Timed, Timed]],
    before: Timed,
    after: Timed,
    min_speedup: float,
    retimes: int = RETIMES,
) -> tuple[bool, str, Timed, Timed]:
    """`decide`, after timing the pair again while the pruned model looks faster but not beyond
    the noise: at most `retimes` more times (`measure(n)` times the n-th), each pooled with the
    rounds before (`Timed.pooled`), so the rounds a busy minute hit stop setting the noise
    (`latency.spread`). A step that is not faster stays inconclusive and is dropped. Returns
    the decision, its reason and the pooled timings."""
    for attempt in range(1, retimes + 1):
        gain, noise = speedup(before, after)
        if not 0 < gain <= noise:
            break
        again_before, again_after = measure(attempt)
        before, after = before.pooled(again_before), after.pooled(again_after)
    kept, why = decide(before, after, min_speedup)
    return kept, why, before, after


def decide(before: Timed, after: Timed, min_speedup: float) -> tuple[bool, str]:
    """Keep a pruning step only when the pruned model is faster by more than its noise (and by
    at least `min_speedup`); the reason, with the numbers, either way."""
    gain, noise = speedup(before, after)
    if before.median_ms is None or after.median_ms is None:
        return True, f"not timed ({before.reason or after.reason}); kept unverified"
    numbers = (
        f"{before.median_ms:.4f} → {after.median_ms:.4f} ms ({100 * gain:+.1f} %, noise "
        f"±{100 * noise:.1f} %, {after.source})"
    )
    if gain <= noise:
        return False, f"{numbers}: not measurably faster, not kept"
    if gain < min_speedup:
        return False, f"{numbers}: faster by less than min_speedup {min_speedup:g}, not kept"
    return True, f"{numbers}: faster, kept"
