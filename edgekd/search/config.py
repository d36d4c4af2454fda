"""The search stage's YAML section and the target facts it needs (torch-free: `edgekd
validate` and `search --dry-run` read it without importing torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from edgekd.config.schema import PathStr, Strict, TrainConfig, default
from edgekd.search.space import MobileNetSpace

if TYPE_CHECKING:
    from edgekd.config.schema import TargetProfile
    from edgekd.plan import Plan


class ProxyTrain(TrainConfig):
    """The short training that scores a candidate (the pipeline's `distill:` loss)."""

    epochs: float = default(TrainConfig, "epochs", 1)
    lr: float = default(TrainConfig, "lr", 0.1)
    train_subset: int = Field(
        10_000, gt=0, description="Training images per proxy run (a seeded subset, the same each)."
    )


class SearchMeasure(Strict):
    """The bench protocol for timing candidates, shorter than the bench stage's."""

    warmup: int = Field(10, ge=0, description="Untimed runs first.")
    iterations: int = Field(100, gt=0, description="Least timed runs.")
    min_seconds: float = Field(0.5, ge=0, description="Least timed seconds.")


class SearchConfig(Strict):
    target: PathStr = Field(description="Target profile the budget is for (targets/*.yaml).")
    latency_budget_ms: float = Field(gt=0, description="Batch-1 latency budget on the target.")
    precision: Literal["int8", "fp32"] | None = Field(
        None, description="Precision timed; null: int8 when the target lists it, else fp32."
    )
    runtime: str | None = Field(
        None, description="Runtime timed; null: the first one the target lists."
    )
    space: MobileNetSpace = Field(
        default_factory=MobileNetSpace, description="The students a trial may choose."
    )
    predictor: Literal["measured", "lut", "roofline", "flops"] = Field(
        "measured",
        description="measured: export and time each candidate; lut: sum of block times from "
        "`lut:`; roofline: from the target's `peak:`; flops: MACs scaled by one measured "
        "candidate (a baseline).",
    )
    lut: PathStr | None = Field(
        None,
        description="Latency table for `predictor: lut`, made on the target by "
        "`edgekd profile PIPELINE`.",
    )
    objective: Literal["budget", "pareto"] = Field(
        "budget",
        description="budget: best proxy accuracy under the budget (TPE); pareto: NSGA-II on "
        "accuracy and latency, the front in the report.",
    )
    trials: int = Field(40, gt=0, description="Trials in all, counting a resumed study's.")
    proxy: ProxyTrain = Field(default_factory=ProxyTrain, description="How candidates are scored.")
    measure: SearchMeasure = Field(default_factory=SearchMeasure, description="Timing protocol.")
    storage: str | None = Field(
        None,
        description="Optuna RDB URL shared by several machines (postgresql://..., mysql://...); "
        "null: study.db (SQLite) in the stage folder.",
    )


def target_profile(plan: Plan, cfg: SearchConfig) -> TargetProfile:
    from edgekd.config.loader import load_yaml, validate
    from edgekd.config.schema import TargetProfile

    doc = load_yaml(plan.resolve(cfg.target))
    return validate(TargetProfile, doc.data, doc)


def precision_for(cfg: SearchConfig, target: TargetProfile) -> str:
    return cfg.precision or ("int8" if "int8" in target.precisions else "fp32")
