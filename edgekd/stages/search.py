"""Stage `search`: choose the student that fits a latency budget on a target.

Trials come from Optuna (edgekd/search/study.py); each candidate's latency is predicted on the
target (measured, roofline or FLOPs: edgekd/search/predict.py) and those within the budget get a
short KD training on a seeded subset, scored on the validation split, never test. The winner is
checked before it is handed on: it exports to the file the target runs, passes the check against
onnxruntime and runs on the target's runtime, so an undeployable student is never trained in
full. It produces `architecture`, which the student stage takes in place of its own `model:`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from edgekd.artifacts import Artifact
from edgekd.search.config import SearchConfig, bound_space, precision_for, target_profile
from edgekd.stage import STAGES, Stage, StageContext

if TYPE_CHECKING:
    from edgekd.plan import Plan


@STAGES.register("search")
class SearchStage(Stage):
    Config = SearchConfig
    requires = ("teacher",)
    produces = ("architecture",)

    def check(self, cfg: Any, plan: Plan, index: int) -> None:
        if cfg.targets is None:
            self._check_one(cfg, plan, ("stages", index))
            return
        for j, entry in enumerate(cfg.targets):
            self._check_one(cfg.for_target(entry), plan, ("stages", index, "targets", j))
        loc = ("stages", index, "targets")
        if cfg.predictor == "lut":
            raise plan.doc.error(
                loc, "a latency table belongs to one target; search several with measured"
            )
        labels = [label for label, _ in self.fan_out(cfg, plan)]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise plan.doc.error(
                loc,
                f"targets named {', '.join(twice)} more than once with the same runtime and "
                "precision: each gets its own run folder",
            )
        taken = {s.dirname for s in plan.stages} | {"cache", ".previous"}
        unsafe = [x for x in labels if x in taken or not re.fullmatch(r"[A-Za-z0-9][\w.-]*", x)]
        if unsafe:
            raise plan.doc.error(
                loc,
                f"target names {unsafe} cannot name a run folder: letters, digits, . _ - only, "
                "and not a stage folder or `cache`; rename them in their profiles",
            )

    def fan_out(self, cfg: Any, plan: Plan) -> list[tuple[str, Any]]:
        """One search (and everything after it) per entry of `targets:`, labelled by target
        name, and by runtime and precision too when one target is listed more than once."""
        if cfg.targets is None:
            return []
        runs = [cfg.for_target(entry) for entry in cfg.targets]
        names = [target_profile(plan, one).name for one in runs]
        out = []
        for name, one in zip(names, runs, strict=True):
            if names.count(name) > 1:
                target = target_profile(plan, one)
                name += f"-{one.runtime or target.runtimes[0]}-{precision_for(one, target)}"
            out.append((name, one))
        return out

    def _check_one(self, cfg: Any, plan: Plan, loc: tuple[Any, ...]) -> None:
        stage_loc = loc[:2]
        if not plan.resolve(cfg.target).exists():
            raise plan.doc.error((*loc, "target"), f"target profile {plan.not_found(cfg.target)}")
        target = target_profile(plan, cfg)
        precision = precision_for(cfg, target)
        if precision not in target.precisions:
            raise plan.doc.error(
                (*loc, "precision"),
                f"{cfg.target} lists precisions {target.precisions}, not {precision}",
            )
        if cfg.runtime is not None and cfg.runtime not in target.runtimes:
            raise plan.doc.error(
                (*loc, "runtime"),
                f"{cfg.target} lists runtimes {target.runtimes}, not {cfg.runtime}",
            )
        if cfg.latency_budget_vs_teacher is not None and "fp32" not in target.precisions:
            raise plan.doc.error(
                (*loc, "latency_budget_vs_teacher"),
                f"the budget is a fraction of the teacher's FP32 latency, and {cfg.target} lists "
                f"precisions {target.precisions}; give latency_budget_ms there",
            )
        try:
            bound_space(plan, cfg)
        except ValueError as exc:
            raise plan.doc.error((*stage_loc, "space"), str(exc)) from None
        if cfg.predictor == "lut" and cfg.space.family != "mobilenetv2":
            raise plan.doc.error(
                (*stage_loc, "predictor"),
                f"latency tables are built for mobilenetv2 spaces; a {cfg.space.family} space "
                "uses measured, roofline or flops",
            )
        if cfg.predictor == "lut" and cfg.lut is None:
            # the file itself may not exist yet: `edgekd profile` loads this plan to make it
            raise plan.doc.error(
                (*stage_loc, "predictor"),
                f"predictor lut needs `lut:`, the latency table that `edgekd profile {plan.path}` "
                "writes on the target",
            )
        if cfg.predictor == "roofline":
            peak = target.peak
            if not peak.roofline_ready:
                raise plan.doc.error(
                    (*stage_loc, "predictor"),
                    f"the roofline needs `peak:` figures (int8_tops or fp16_tflops, and "
                    f"mem_gbps) in {cfg.target}; it has {peak.model_dump(exclude_none=True)}",
                )
        size = plan.config.data.image_size or 28  # Fashion-MNIST's, when not set
        if cfg.predictor == "lut" and cfg.space.resolution != [size]:
            raise plan.doc.error(
                (*stage_loc, "space", "resolution"),
                f"a latency table times blocks, not the resize from the data's {size} px to "
                f"{cfg.space.resolution}; use predictor: measured to search the resolution",
            )
        if cfg.space.family == "teacher" and cfg.space.resolution != [size]:
            raise plan.doc.error(
                (*stage_loc, "space", "resolution"),
                f"the data are {size}×{size} px; a space cut from the teacher keeps its "
                f"resolution, so resolution must be [{size}]",
            )

    def run(self, ctx: StageContext, cfg: SearchConfig) -> dict[str, Artifact]:
        from edgekd.search import driver

        return driver.search(ctx, cfg)
