"""The qat stage's INT8 ladder, rung by rung: PTQ, then (past the accuracy budget) sensitivity and
precision fallback, then the KD-QAT decision; each rung's validation and test accuracy and its
exported model's measured latency go into one record for the report.

Decisions are made on the validation split only; test accuracy is recorded, never used.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgekd import distributed
from edgekd.distill.trainer import evaluate, predict
from edgekd.quant import ladder, nncf_qat

if TYPE_CHECKING:
    from edgekd.data.datasets import ImageSet, Splits
    from edgekd.stage import StageContext
    from edgekd.stages.qat import QATConfig

Record = dict[str, Any]


class Ladder:
    """One climb of the ladder for one student (see the module docstring)."""

    def __init__(
        self,
        ctx: StageContext,
        cfg: QATConfig,
        model: nn.Module,
        splits: Splits,
        calibration: ImageSet,
        batch_size: int,
        device: torch.device,
    ) -> None:
        self.ctx, self.cfg, self.model, self.splits = ctx, cfg, model.eval(), splits
        self.calibration, self.batch_size, self.device = calibration, batch_size, device

    def quantize(self, nodes: list[str]) -> nn.Module:
        return nncf_qat.quantize(
            self.model,
            self.calibration,
            self.splits,
            self.batch_size,
            self.device,
            self.cfg.preset,
            ignored=nodes,
            per_channel=self.cfg.weights == "per_channel",
        )

    def val(self, model: nn.Module) -> float:
        return round(evaluate(model, self.splits.val, self.splits, self.device), 2)

    def test(self, model: nn.Module) -> float:
        return round(evaluate(model, self.splits.test, self.splits, self.device), 2)

    # -- distributed.once: rank 0 climbs, the other ranks rebuild its choice -------------------

    def climb(self) -> tuple[nn.Module, Record]:
        with distributed.alone():
            return self._climb()

    def share(self, result: tuple[nn.Module, Record]) -> Any:
        model, record = result
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        return nncf_qat.config(model), state, record

    def rebuild(self, payload: Any) -> tuple[nn.Module, Record]:
        quant_config, state, record = payload
        model = nncf_qat.restore(copy.deepcopy(self.model).eval().cpu(), quant_config)
        model.load_state_dict(state)
        return model.to(self.device), record

    # -- the rungs ---------------------------------------------------------------------------

    def _climb(self) -> tuple[nn.Module, Record]:
        cfg, log = self.cfg, self.ctx.log
        budget = cfg.max_accuracy_drop
        fp32_val = self.val(self.model)
        ptq = self.quantize([])
        ptq_val = self.val(ptq)
        rungs: list[Record] = [
            {"rung": "fp32", "val_acc": fp32_val, "test_acc": self.ctx.metrics["fp32_test_acc"]},
            _rung("ptq", fp32_val, ptq_val, self.test(ptq)),
        ]
        record: Record = {
            "budget_points": budget,
            "rungs": rungs,
            "sensitivity": [],
            "fallback": None,
            "float_layers": [],
            "float_nodes": [],
        }
        within = budget is None or fp32_val - ptq_val <= budget
        log(
            f"FP32 {fp32_val:.2f}% → PTQ INT8 {ptq_val:.2f}% on validation (drop "
            f"{fp32_val - ptq_val:.2f} points; budget {_budget(budget)})"
        )
        chosen, chosen_val = ptq, ptq_val
        if not within and cfg.fallback.max_float_layers:
            assert budget is not None
            chosen, chosen_val = self._fallback(ptq, fp32_val, budget, record)
        if cfg.timing is not None:
            self._time(record, ptq, chosen)
        if chosen is not ptq and not keeps_float_layers(cfg.qat, budget, fp32_val - chosen_val):
            record["fallback"]["kept"] = False
            record["fallback"]["why"] = (
                "budget still missed with float layers; KD-QAT starts from the all-INT8 model"
            )
            record.update(float_layers=[], float_nodes=[])
            chosen, chosen_val = ptq, ptq_val
            log("float layers dropped: the budget is still missed, KD-QAT starts from all-INT8")
        record["qat_from"] = "ptq" if chosen is ptq else "fallback"
        drop = round(fp32_val - chosen_val, 2)
        run, why = _qat_decision(cfg.qat, budget, drop)
        record["qat"] = {"run": run, "why": why}
        log(f"KD-QAT {'runs' if run else 'skipped'}: {why}")
        return chosen, record

    def _fallback(
        self, ptq: nn.Module, fp32_val: float, budget: float, record: Record
    ) -> tuple[nn.Module, float]:
        """Sensitivity, then the float fallback; the model kept and its validation accuracy."""
        cfg = self.cfg.fallback
        example = torch.zeros(1, *self.splits.input_shape)
        subset = self.splits.val.subset(
            torch.arange(min(cfg.sensitivity_images, len(self.splits.val)))
        )

        def logits(model: nn.Module) -> torch.Tensor:
            return predict(model, subset, self.splits, self.device).cpu()

        found = ladder.layers(self.model, ptq, example)
        fp32_logits = logits(self.model)
        ranking = ladder.sensitivity(ptq, found, logits, fp32_logits, subset.labels)
        record["sensitivity"] = [vars(s) for s in ranking]
        limit = min(cfg.max_float_layers, len(ranking))
        estimated = ladder.estimates(ptq, ranking, found, limit, logits, subset.labels)
        start = ladder.start_at(estimated, ladder.accuracy(fp32_logits, subset.labels), budget)
        self.ctx.log(
            f"sensitivity of {len(found)} layers on {len(subset)} validation images; most "
            f"sensitive: "
            + ", ".join(f"{s.module} (+{s.gain:.2f} points float)" for s in ranking[:3])
        )
        result, model = ladder.fallback(
            ranking, start, limit, fp32_val, budget, self.quantize, self.val
        )
        record["fallback"] = {**result.to_json(), "estimated_val_acc": estimated}
        best = result.best
        if best is None or model is None or best.val_acc <= record["rungs"][1]["val_acc"]:
            self.ctx.log("precision fallback did not beat PTQ: every layer stays INT8")
            return ptq, record["rungs"][1]["val_acc"]
        if best is not result.last:
            model = self.quantize(best.nodes)
        record.update(float_layers=best.float_layers, float_nodes=best.nodes)
        record["rungs"].append(
            {
                **_rung("fallback", fp32_val, best.val_acc, self.test(model)),
                "float_layers": best.float_layers,
            }
        )
        self.ctx.log(
            f"left in float: {', '.join(best.float_layers)} → {best.val_acc:.2f}% on validation "
            f"(drop {best.drop:.2f}; budget {'met' if best.drop <= budget else 'missed'})"
        )
        return model, best.val_acc

    def _time(self, record: Record, ptq: nn.Module, chosen: nn.Module) -> None:
        """Each rung's exported model timed together on the target; the float layers' cost."""
        from edgekd.latency import NoTarget, time_models

        assert self.cfg.timing is not None
        models = {"fp32": self.model, "ptq": ptq}
        if chosen is not ptq:
            models["fallback"] = chosen
        loc = ("stages", self.ctx.index, "timing")
        try:
            timed = time_models(
                self.ctx.plan, self.cfg.timing, loc, models, self.splits, self.ctx.dir / "rungs"
            )
        except NoTarget as exc:
            record["timing"] = str(exc)
            self.ctx.log(f"rungs not timed: {exc}")
            return
        for rung in record["rungs"]:
            if rung["rung"] in timed:
                rung["latency"] = timed[rung["rung"]].to_json()
        fallback = timed.get("fallback")
        if fallback is not None and fallback.median_ms and timed["ptq"].median_ms:
            cost = fallback.median_ms - timed["ptq"].median_ms
            record["float_cost_ms"] = round(cost, 4)
            self.ctx.log(
                f"the float layers cost {cost * 1000:+.1f} µs ({fallback.source}): "
                f"{timed['ptq'].median_ms:.4f} → {fallback.median_ms:.4f} ms"
            )

    def after_qat(self, model: nn.Module, record: Record) -> None:
        """The QAT rung: same graph as the rung before it, so the same latency."""
        fp32_val = record["rungs"][0]["val_acc"]
        rung = _rung("qat", fp32_val, self.val(model), self.test(model))
        start = record.get("qat_from", record["rungs"][-1]["rung"])
        before = next(r for r in record["rungs"] if r["rung"] == start)
        if "latency" in before:
            rung["latency"] = {**before["latency"], "same_graph_as": before["rung"]}
        record["rungs"].append(rung)
        self.ctx.log(f"after KD-QAT {rung['val_acc']:.2f}% on validation (drop {rung['drop']:.2f})")


def _rung(name: str, fp32_val: float, val_acc: float, test_acc: float) -> Record:
    return {
        "rung": name,
        "val_acc": val_acc,
        "drop": round(fp32_val - val_acc, 2),
        "test_acc": test_acc,
    }


def _budget(budget: float | None) -> str:
    return "none" if budget is None else f"{budget:g}"


def keeps_float_layers(mode: str, budget: float | None, drop: float) -> bool:
    """Whether the float layers the fallback chose ship. Not when the budget is still missed
    and KD-QAT will run anyway: QAT then starts from the all-INT8 model, since the float layers
    did not earn their latency (one depthwise layer left float between Q/DQ pairs cost +28 % on
    the flagship's pruned student, measured)."""
    return mode == "never" or budget is None or drop <= budget


def _qat_decision(mode: str, budget: float | None, drop: float) -> tuple[bool, str]:
    if mode == "always":
        return True, "qat: always"
    if mode == "never":
        if budget is not None and drop > budget:
            return False, f"qat: never (budget missed by {drop - budget:.2f} points)"
        return False, "qat: never"
    if budget is None:
        return True, "no accuracy budget (max_accuracy_drop: null)"
    if drop > budget:
        return True, f"drop {drop:.2f} points is still over the budget of {budget:g}"
    return False, f"drop {drop:.2f} points is within the budget of {budget:g}"
