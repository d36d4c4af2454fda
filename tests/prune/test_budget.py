"""Pruning that must pay: the latency-budget search on a known latency curve, the keep-or-reject
decision, the named importance criteria, and per-layer ratios ranked by importance per MAC."""

import math

import pytest
import torch

from edgekd.latency import Timed
from edgekd.models import zoo
from edgekd.models.specs import ModelSpec
from edgekd.prune import budget, depgraph, importance

NOISE = 0.02


def timed(ms: float, noise: float = NOISE) -> Timed:
    return Timed("m", ms, noise, "a test curve")


def curve(ms_at: dict[float, float] | None = None, drift: float = 1.0):
    """A measure() whose pruned copy takes 1 − 0.8·ratio ms and whose reference moves by
    `drift` after the first call (a machine that got slower)."""
    calls = []

    def measure(ratio: float) -> tuple[Timed, Timed]:
        scale = 1.0 if not calls else drift
        calls.append(ratio)
        return timed(1.0 * scale), timed((1.0 - 0.8 * ratio) * scale)

    return measure, calls


def test_the_search_meets_the_budget_with_the_least_pruning():
    measure, calls = curve()
    found = budget.search_ratio(measure, timed(1.0), budget_ms=0.6, max_probes=6)
    assert found.ratio is not None
    hit = next(p for p in found.probes if p.ratio == found.ratio)
    assert hit.latency_ms <= 0.6 * (1 + NOISE)  # within the budget's noise
    assert hit.latency_ms >= 0.6 * (1 - budget.CLOSE)  # and not pruned much more than needed
    assert found.ratio == pytest.approx(0.5, abs=0.05)
    assert len(calls) <= 4


def test_a_machine_that_slows_down_between_probes_is_corrected():
    measure, _ = curve(drift=1.3)  # every probe after the first runs on a 30 % slower machine
    found = budget.search_ratio(measure, timed(1.0), budget_ms=0.6, max_probes=6)
    assert found.ratio == pytest.approx(0.5, abs=0.05)
    assert all(p.measured_ms > p.latency_ms for p in found.probes[1:])


def test_an_unreachable_budget_has_no_ratio():
    measure, calls = curve()
    found = budget.search_ratio(measure, timed(1.0), budget_ms=0.1, max_probes=8)
    assert found.ratio is None
    assert max(calls) == budget.MAX_RATIO  # it tried the most it may prune


@pytest.mark.parametrize(
    ("after_ms", "kept"),
    [(0.80, True), (0.99, False), (1.01, False)],
)
def test_a_step_is_kept_only_when_faster_beyond_the_noise(after_ms, kept):
    decision, why = budget.decide(timed(1.0), timed(after_ms), min_speedup=0.0)
    assert decision is kept
    assert why.endswith("kept") and (("not measurably faster" in why) is not kept)
    assert "1.0000 → " in why


def test_min_speedup_raises_the_bar():
    assert budget.decide(timed(1.0), timed(0.9), 0.0)[0]
    kept, why = budget.decide(timed(1.0), timed(0.9), 0.2)
    assert not kept and "less than min_speedup 0.2" in why


def test_an_untimed_step_is_kept_and_says_so():
    kept, why = budget.decide(Timed("a", None, math.inf, "x", "no target"), timed(0.5), 0.0)
    assert kept and "unverified" in why and "no target" in why


@pytest.fixture()
def student():
    torch.manual_seed(0)
    spec = ModelSpec(
        arch="mobilenetv2",
        width=1.0,
        last_channel=64,
        blocks=[[1, 16, 1, 1], [4, 24, 2, 2], [4, 32, 2, 2]],
    )
    return zoo.build(spec, 1, 10).eval()


@pytest.mark.parametrize("name", ["l1", "l2", "group_norm", "taylor", "hessian"])
def test_every_named_criterion_prunes(student, name):
    example = torch.zeros(1, 1, 28, 28)
    scorer = importance.IMPORTANCE.get(name)()
    images, labels = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    importance.prepare(name, scorer, student, [(images, labels)])
    ignored = depgraph.classifier_layers(student, 10)
    scores = importance.scores(student, example, scorer, ignored)
    assert scores and all(torch.isfinite(s).all() for s in scores.values())
    before = zoo.count_params(student)
    depgraph.prune_channels(student, example, 0.3, 8, 10, importance.Lookup(student, scores))
    assert zoo.count_params(student) < before
    assert student(images[:2]).shape == (2, 10)


def test_the_hessian_criterion_accumulates_every_image(student):
    scorer = importance.IMPORTANCE.get("hessian")()
    images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    importance.prepare("hessian", scorer, student, [(images, labels)])
    counts = set(scorer._counter.values())
    assert counts == {8}  # torch-pruning 1.6.1's own accumulate_grad would keep one image


def test_criteria_rank_channels_differently(student):
    example = torch.zeros(1, 1, 28, 28)
    ignored = depgraph.classifier_layers(student, 10)
    ranked = {}
    for name in ("l1", "group_norm", "taylor"):
        scorer = importance.IMPORTANCE.get(name)()
        importance.prepare(
            name, scorer, student, [(torch.randn(32, 1, 28, 28), torch.arange(32) % 10)]
        )
        ranked[name] = {
            k: v.argsort() for k, v in importance.scores(student, example, scorer, ignored).items()
        }
    layer = next(iter(ranked["l1"]))
    assert not torch.equal(ranked["l1"][layer], ranked["taylor"][layer])


def test_latency_allocation_prunes_expensive_layers_harder(student):
    """Ranked by importance per MAC, channels whose layers cost many MACs each go first: the
    per-layer ratios differ, unlike the uniform ones, and more MACs go for the same share of
    all channels; more pruning always removes more."""
    example = torch.zeros(1, 1, 28, 28)
    ignored = depgraph.classifier_layers(student, 10)
    scorer = importance.IMPORTANCE.get("group_norm")()
    scores = importance.scores(student, example, scorer, ignored)
    costs = depgraph.channel_costs(student, example, 10)
    assert set(costs) == set(scores) and all(c > 0 for c in costs.values())
    before = depgraph.channel_counts(student)
    uniform = depgraph.prune_channels(
        _copy(student), example, 0.3, 1, 10, importance.Lookup(student, scores)
    )
    macs = depgraph.module_macs
    kept_macs = []
    for ratio in (0.3, 0.5, 0.7):
        ratios = depgraph.allocate(scores, costs, ratio)
        assert max(ratios.values()) <= depgraph.MAX_LAYER_RATIO
        ranked = _copy(student)
        depgraph.prune_channels(
            ranked, example, ratio, 1, 10, importance.Lookup(ranked, scores), ratios
        )
        kept_macs.append(sum(macs(ranked, example).values()))
        if ratio == 0.3:
            kept_uniform = [
                a / b for a, b in zip(depgraph.channel_counts(uniform), before, strict=True)
            ]
            kept_ranked = [
                a / b for a, b in zip(depgraph.channel_counts(ranked), before, strict=True)
            ]
            assert max(kept_uniform[:-1]) - min(kept_uniform[:-1]) < 0.1  # one ratio everywhere
            assert max(kept_ranked[:-1]) - min(kept_ranked[:-1]) > 0.2  # each layer its own
            assert kept_macs[0] < sum(macs(uniform, example).values())
    assert kept_macs[0] > kept_macs[1] > kept_macs[2]


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_models_timed_together_are_compared_round_by_round():
    """One busy round slows both models: their ratio, not their medians, decides."""
    from edgekd.latency import speedup

    before = Timed("a", 1.0, 0.3, "x", rounds=(1.0, 1.6, 1.0), within=0.01)
    after = Timed("b", 0.9, 0.3, "x", rounds=(0.9, 1.44, 0.9), within=0.01)
    gain, noise = speedup(before, after)
    assert gain == pytest.approx(0.1) and noise == pytest.approx(0.02)
    assert budget.decide(before, after, 0.0)[0]
    # the same medians without rounds: the rows' 30 % noise hides the 10 % gain
    assert not budget.decide(timed(1.0, 0.3), timed(0.9, 0.3), 0.0)[0]


# 537a60e, seed 0 of the flagship benchmark: one busy round hit each model in a different round.
BUSY_BEFORE, BUSY_AFTER = (0.0851, 0.0850, 0.1284), (0.0688, 0.1082, 0.0662)


def _rounds(label, rounds, source="onnxruntime on cpu-x86, 1 thread, 3 rounds"):
    import statistics

    return Timed(label, statistics.median(rounds), 0.0, source, rounds=rounds, within=0.005)


def test_an_inconclusive_pruning_step_is_timed_again_and_the_busy_rounds_stop_counting():
    from edgekd.latency import speedup

    before, after = _rounds("unpruned", BUSY_BEFORE), _rounds("pruned", BUSY_AFTER)
    gain, noise = speedup(before, after)
    assert 0 < gain < noise  # 19 % faster, ±47 %: what dropped the flagship's pruning
    assert not budget.decide(before, after, 0.0)[0]
    calls = []

    def measure(n):  # the next timing: a quiet machine
        calls.append(n)
        return _rounds("unpruned", (0.0849, 0.0852, 0.0850)), _rounds(
            "pruned", (0.0687, 0.0690, 0.0689)
        )

    kept, why, pooled_before, pooled_after = budget.settle(measure, before, after, 0.0)
    assert kept and calls == [1]  # one more timing settled it
    assert len(pooled_after.rounds) == 6 and "6 rounds" in why
    assert speedup(pooled_before, pooled_after)[1] < 0.05  # the two busy rounds are outvoted


def test_a_pruning_step_that_is_not_faster_is_timed_again_at_most_retimes_times_and_dropped():
    import random

    scatter = random.Random(0)  # both models the same speed, each round off by about 1 %

    def same_speed():
        return tuple(0.081 * (1 + scatter.gauss(0, 0.01)) for _ in range(3))

    calls = []

    def measure(n):
        calls.append(n)
        return _rounds("unpruned", same_speed()), _rounds("pruned", same_speed())

    before, after = (
        _rounds("unpruned", (0.080, 0.082, 0.081)),
        _rounds("pruned", (0.079, 0.083, 0.080)),
    )
    kept, why, _, after_all = budget.settle(measure, before, after, 0.0)
    assert not kept and "not measurably faster" in why
    assert calls == list(range(1, budget.RETIMES + 1)) and len(after_all.rounds) == 9
    # a step measured clearly slower, or clearly faster, is never timed again
    for fast in [(0.060, 0.061, 0.060), (0.100, 0.101, 0.100)]:
        calls.clear()
        budget.settle(measure, before, _rounds("pruned", fast), 0.0)
        assert calls == []


def test_spread_is_half_the_range_up_to_four_rounds_and_robust_from_five():
    from edgekd.latency import spread

    assert spread([1.0, 1.2, 1.1]) == pytest.approx(0.1)
    quiet = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98]
    assert spread(quiet) < 0.03
    assert spread([*quiet[:4], 1.6, 0.5]) < 0.03  # two busy rounds move it little
