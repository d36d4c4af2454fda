"""The prune stage's decision, run by rank 0: how much to prune (a fixed ratio, or the amount a
latency budget needs, prune/budget.py), which channels (the importance criterion; per-layer
shares uniform, ranked by importance per MAC, or by measured sensitivity, prune/sensitivity.py),
and whether the pruned model is kept (measurably faster on the target, or the step is rejected
and the student passes through unchanged)."""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgekd import distributed
from edgekd.data.datasets import batches, sample
from edgekd.distill.trainer import predict
from edgekd.errors import EdgeKDError
from edgekd.latency import NoTarget, Timed, time_models
from edgekd.prune import budget, depgraph, importance, sensitivity
from edgekd.quant import nncf_qat

if TYPE_CHECKING:
    from edgekd.data.datasets import Splits
    from edgekd.stage import StageContext
    from edgekd.stages.prune import PruneConfig

TIMING_BATCHES = 2  # calibration batches of 64 for the throw-away PTQ of a timed copy
# The timed copies' files are checked against PyTorch before timing, as bench rows are, but an
# INT8 copy is not held to a top-1 agreement: it is a pruned model before its recovery training,
# quantized by a throw-away PTQ, whose logits nearly tie on many images, so INT8 rounding flips
# their top-1 while the file computes the same function (measured: 30 % of channels pruned,
# 94.5 % top-1 agreement at a largest logit gap of 0.008). Its timing needs a file that runs
# with the model's shapes (a wrong output shape still fails); the model that ships is held to
# the export stage's parity gate.
PROBE_GATE = {"fp32": 99.5, "fp16": 99.0, "int8": 0.0}
Record = dict[str, Any]


class PruneJob:
    def __init__(
        self,
        ctx: StageContext,
        cfg: PruneConfig,
        model: nn.Module,
        given: nn.Module,
        splits: Splits,
        meta: dict[str, Any],
    ) -> None:
        """`model`: the float student to prune; `given`: the stage's input as loaded (INT8 when
        quantized), the reference every timing compares with."""
        self.ctx, self.cfg, self.model, self.given, self.splits = ctx, cfg, model, given, splits
        self.quantized = bool(meta.get("quantization"))
        # Timed as it will ship: INT8 when the student is, or when a later stage (prune before
        # qat) quantizes it; the latency that matters is the final model's.
        later = [s for s in ctx.plan.stages[ctx.index + 1 :] if s.stage.quantizes]
        self.ships_int8 = self.quantized or bool(later)
        if not self.quantized and later:  # quantized after this stage: as that stage will
            meta = {
                "quant_preset": getattr(later[0].cfg, "preset", "performance"),
                "quant_weights": getattr(later[0].cfg, "weights", "per_channel"),
            }
        self._reference: nn.Module | None = None  # the unpruned student as it ships
        self.float_nodes = list(meta.get("float_layers") or [])
        self.preset = meta.get("quant_preset", "performance")
        self.per_channel = meta.get("quant_weights", "per_channel") == "per_channel"
        self.example = torch.zeros(1, *splits.input_shape)
        self.classes = len(splits.classes)
        self.allocation = cfg.allocation or cfg.default_allocation()
        self.costs: dict[str, float] = {}
        self.table: sensitivity.Table | None = None
        self.layer_ratios: dict[str, float] | None = None  # of the last pruned copy

    # -- distributed.once: rank 0 decides, the other ranks take its weights ------------------

    def decide(self) -> tuple[nn.Module, Record]:
        with distributed.alone():
            return self._decide()

    @staticmethod
    def share(result: tuple[nn.Module, Record]) -> Any:
        model, record = result
        return {k: v.cpu() for k, v in model.state_dict().items()}, record

    def rebuild(self, payload: Any) -> tuple[nn.Module, Record]:
        from edgekd.models.io import load_state, resize_to_state_dict

        state, record = payload
        resize_to_state_dict(self.model, state)
        load_state(self.model, state, "pruned student")
        return self.model, record

    # -- the decision --------------------------------------------------------------------------

    def _decide(self) -> tuple[nn.Module, Record]:
        cfg = self.cfg
        name = cfg.importance
        scorer = importance.IMPORTANCE.get(name)()
        importance.prepare(name, scorer, self.model, self._labelled())
        ignored = depgraph.classifier_layers(self.model, self.classes)
        self.scores = importance.scores(self.model, self.example, scorer, ignored)
        self.model.zero_grad(set_to_none=True)
        if self.allocation == "latency":
            self.costs = depgraph.channel_costs(self.model, self.example, self.classes)
        record: Record = {
            "importance": name,
            "allocation": self.allocation,
            "mode": "ratio" if cfg.latency_budget_ms is None else "latency_budget",
            "timed_as": "int8" if self.ships_int8 else "fp32",
        }
        if self.allocation == "sensitivity":
            record["sensitivity"] = self._profile()
        if cfg.latency_budget_ms is not None:
            ratio, verdict = self._search(cfg.latency_budget_ms, record)
            if ratio is None:
                return self.model, record | verdict
        else:
            ratio, verdict = cfg.ratio, None
        pruned = self.pruned(ratio)
        record["ratio"] = round(ratio, 4)
        if self.layer_ratios is not None:
            record["layer_ratios"] = {k: round(v, 4) for k, v in self.layer_ratios.items()}
        if verdict is None:
            verdict = self._check(pruned) if cfg.require_speedup else {"kept": True}
        record.update(verdict)
        if not record["kept"]:
            return self.model, record
        if cfg.bn_recalibration_images:
            depgraph.recalibrate_batchnorm(pruned, self.train_images(cfg.bn_recalibration_images))
        return pruned, record

    def train_images(self, count: int) -> list[torch.Tensor]:
        """`count` training images drawn with the run's seed, in batches: what BatchNorm
        statistics are re-estimated on after channels were removed."""
        images = sample(self.splits.train, count, self.ctx.plan.config.seed)
        return [b.images for b in batches(images, self.splits, 256)]

    def pruned(self, ratio: float) -> nn.Module:
        """A pruned copy of the float student: `ratio` of every layer's channels (uniform), of
        all channels (latency), or as many MACs as the uniform `ratio` removes (sensitivity)."""
        if self.allocation == "sensitivity":
            return self._sensitive(ratio)
        ratios = None
        if self.allocation == "latency":
            ratios = depgraph.allocate(self.scores, self.costs, ratio)
        self.layer_ratios = ratios
        return self._prune(ratio, ratios)

    def _prune(self, ratio: float, ratios: dict[str, float] | None) -> nn.Module:
        model = copy.deepcopy(self.model)
        if ratios is not None and not any(ratios.values()):
            return model
        lookup = importance.Lookup(model, self.scores)
        return depgraph.prune_channels(
            model, self.example, ratio, self.cfg.round_to, self.classes, lookup, ratios
        )

    def _macs(self, model: nn.Module) -> int:
        return sum(depgraph.module_macs(model, self.example).values())

    def _profile(self) -> Record:
        """Every group pruned alone at each of sensitivity.LEVELS, BatchNorm recalibrated,
        scored on validation images (prune/sensitivity.py)."""
        recalibration = self.train_images(sensitivity.RECALIBRATION_IMAGES)
        held = sample(self.splits.val, sensitivity.PROFILE_IMAGES, self.ctx.plan.config.seed)

        def recalibrated(ratios: dict[str, float]) -> nn.Module:
            model = self._prune(0.0, ratios)
            depgraph.recalibrate_batchnorm(model, recalibration)
            return model

        def score(model: nn.Module) -> tuple[float, float]:
            logits = predict(model, held, self.splits, torch.device("cpu"))
            loss = float(nn.functional.cross_entropy(logits, held.labels))
            return loss, float((logits.argmax(1) == held.labels).float().mean()) * 100

        self.ctx.log(
            f"profiling {len(self.scores)} layers at {len(sensitivity.LEVELS)} ratios each"
        )
        start = time.perf_counter()
        self.table, base = sensitivity.profile(list(self.scores), recalibrated, score, self._macs)
        return {
            "unpruned": {k: round(v, 4) for k, v in base.items()},
            "table": sensitivity.to_json(self.table),
            "seconds": round(time.perf_counter() - start, 1),
        }

    def _sensitive(self, ratio: float) -> nn.Module:
        """Per-layer ratios saving the MACs the uniform `ratio` saves, where the profile says
        they cost the least loss; the table's sums overestimate what pruning coupled groups
        together saves, so the allocation is asked for the shortfall again (a few times)."""
        assert self.table is not None
        whole = self._macs(self.model)
        target = whole - self._macs(self._prune(ratio, None))
        need = float(target)
        for _ in range(4):
            self.layer_ratios = sensitivity.allocate(self.table, need)
            model = self._prune(0.0, self.layer_ratios)
            short = target - (whole - self._macs(model))
            if short <= 0:
                break
            need += short
        return model

    def _labelled(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not importance.needs_gradients(self.cfg.importance):
            return []
        images = sample(self.splits.train, importance.GRADIENT_IMAGES, self.ctx.plan.config.seed)
        return [(b.images, b.labels) for b in batches(images, self.splits, 64)]

    def _deployable(self, model: nn.Module) -> nn.Module:
        """`model` as the final model's graph: INT8 (with the same float layers) when it ships
        so; a throw-away PTQ on a few batches sets the graph, not accuracy."""
        if not self.ships_int8:
            return model
        images = sample(self.splits.train, 64 * TIMING_BATCHES, 0)
        inputs = [b.images for b in batches(images, self.splits, 64)]
        return nncf_qat.quantize_inputs(
            model, inputs, torch.device("cpu"), self.preset, self.float_nodes, self.per_channel
        )

    def _time(self, pruned: nn.Module | None, label: str) -> tuple[Timed, Timed | None]:
        """The unpruned student (as given) and `pruned` timed together."""
        assert self.cfg.timing is not None
        if self._reference is None:
            self._reference = self.given if self.quantized else self._deployable(self.given)
        models = {"unpruned": self._reference}
        if pruned is not None:
            models["pruned"] = self._deployable(pruned)
        timed = time_models(
            self.ctx.plan,
            self.cfg.timing,
            ("stages", self.ctx.index, "timing"),
            models,
            self.splits,
            self.ctx.dir / "timing" / label,
            gate=PROBE_GATE,
        )
        return timed["unpruned"], timed.get("pruned")

    def _pair(self, pruned: nn.Module, label: str) -> tuple[Timed, Timed]:
        before, after = self._time(pruned, label)
        assert after is not None
        return before, after

    def _check(self, pruned: nn.Module) -> Record:
        """Kept only when measurably faster than the unpruned model (prune/budget.py)."""
        if self.cfg.timing is None:
            return {"kept": True, "why": "not timed (timing: null); kept unverified"}
        try:
            before, after = self._pair(pruned, "check")
        except NoTarget as exc:
            return {"kept": True, "why": f"not timed ({exc}); kept unverified"}
        return self._settle(lambda: pruned, before, after, "check")

    def _settle(
        self, pruned: Callable[[], nn.Module], before: Timed, after: Timed, label: str
    ) -> Record:
        """The keep decision, the pruned model (built by `pruned` only if needed) timed again
        while it is inconclusive (prune/budget.py)."""
        model = functools.cache(pruned)

        def again(n: int) -> tuple[Timed, Timed]:
            self.ctx.log(f"faster, within the noise; timing again ({n}/{budget.RETIMES})")
            return self._pair(model(), f"{label}-again{n}")

        kept, why, before, after = budget.settle(again, before, after, self.cfg.min_speedup)
        return {"kept": kept, "why": why, "before": before.to_json(), "after": after.to_json()}

    def _search(self, budget_ms: float, record: Record) -> tuple[float | None, Record]:
        """The ratio that meets the budget, and the keep decision from its probe."""
        probes: list[tuple[Timed, Timed]] = []

        def measure(ratio: float) -> tuple[Timed, Timed]:
            pair = self._pair(self.pruned(ratio), f"probe{len(probes)}")
            probes.append(pair)
            self.ctx.log(
                f"probe: {100 * ratio:.0f} % of channels → {pair[1].median_ms or 0:.4f} ms "
                f"(unpruned {pair[0].median_ms or 0:.4f} ms)"
            )
            return pair

        try:
            reference = self._time(None, "reference")[0]
        except NoTarget as exc:
            raise EdgeKDError(f"latency_budget_ms needs a target to time on: {exc}") from None
        if reference.median_ms is None:
            raise EdgeKDError(f"the unpruned student could not be timed: {reference.reason}")
        if reference.median_ms <= budget_ms:
            why = f"the unpruned student already meets the budget ({reference.median_ms:.4f} ms)"
            return None, {"kept": False, "why": why, "before": reference.to_json()}
        found = budget.search_ratio(measure, reference, budget_ms, self.cfg.max_probes)
        record["search"] = found.to_json()
        if found.ratio is None:
            tried = ", ".join(
                f"{100 * p.ratio:.0f} % → {p.latency_ms:.4f} ms" for p in found.probes
            )
            raise EdgeKDError(
                f"no pruning amount meets latency_budget_ms {budget_ms} on "
                f"{reference.source}: unpruned {reference.median_ms:.4f} ms; tried {tried}. "
                "Raise the budget, or choose a smaller student (search stage)"
            )
        index = next(i for i, p in enumerate(found.probes) if p.ratio == found.ratio)
        before, after = probes[index]
        ratio = found.ratio
        return ratio, self._settle(lambda: self.pruned(ratio), before, after, "found")
