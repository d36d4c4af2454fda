"""The search stage's YAML section and the target facts it needs (torch-free: `edgekd
validate` and `search --dry-run` read it without importing torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from edgekd.config.schema import PathStr, Strict, TrainConfig, default
from edgekd.search.space import MobileNetSpace
from edgekd.search.structural import Space, TeacherSpace

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
    repeats: int = Field(
        1,
        gt=0,
        description="Fresh processes per candidate; its latency is the median of their medians "
        "(on a shared machine one process can be slowed by others: docs/benchmarks/search.md).",
    )


class TargetBudget(Strict):
    """One target of a search over several, with its own budget (`targets:`)."""

    target: PathStr = Field(description="Target profile (targets/*.yaml).")
    latency_budget_ms: float | None = Field(None, gt=0, description="Budget there, in ms.")
    latency_budget_vs_teacher: float | None = Field(
        None, gt=0, description="Budget there, as a fraction of the teacher's FP32 latency."
    )
    precision: Literal["int8", "fp32"] | None = Field(
        None, description="Precision timed there; null: the stage's `precision:`."
    )
    runtime: str | None = Field(None, description="Runtime timed there; null: the stage's.")

    @model_validator(mode="after")
    def _one_budget(self) -> TargetBudget:
        one_budget(self.latency_budget_ms, self.latency_budget_vs_teacher)
        return self


def one_budget(ms: float | None, vs_teacher: float | None) -> None:
    if (ms is None) == (vs_teacher is None):
        raise ValueError(
            "give one budget: latency_budget_ms (milliseconds) or latency_budget_vs_teacher "
            "(a fraction of the teacher's FP32 latency)"
        )


class SearchConfig(Strict):
    target: PathStr | None = Field(
        None, description="Target profile the budget is for (targets/*.yaml)."
    )
    targets: list[TargetBudget] | None = Field(
        None,
        min_length=1,
        description="Several targets, each with its budget, in place of `target:`: the search "
        "and every stage after it run once per target, in runs/<name>/<target>/, sharing the "
        "stages before it (the teacher and its cached logits).",
    )
    latency_budget_ms: float | None = Field(
        None, gt=0, description="Batch-1 latency budget on the target, in milliseconds."
    )
    latency_budget_vs_teacher: float | None = Field(
        None,
        gt=0,
        description="The budget as a fraction of the teacher's FP32 batch-1 latency on the same "
        "target and runtime, measured when the search starts (0.2: a fifth); a budget that "
        "travels between machines. Give this or latency_budget_ms.",
    )
    precision: Literal["int8", "fp32"] | None = Field(
        None, description="Precision timed; null: int8 when the target lists it, else fp32."
    )
    runtime: str | None = Field(
        None, description="Runtime timed; null: the first one the target lists."
    )
    space: MobileNetSpace | TeacherSpace = Field(
        default_factory=MobileNetSpace,
        description="The students a trial may choose: `family: mobilenetv2` (the default) or "
        "`family: teacher` (the teacher's own network, shrunk; docs/search.md).",
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

    @model_validator(mode="after")
    def _one_budget(self) -> SearchConfig:
        if self.targets is None:
            if self.target is None:
                raise ValueError("give `target:` (or `targets:`, a list with a budget each)")
            one_budget(self.latency_budget_ms, self.latency_budget_vs_teacher)
        elif self.target is not None or self.latency_budget_ms or self.latency_budget_vs_teacher:
            raise ValueError(
                "`targets:` names each target with its budget; drop the stage's own `target:` "
                "and budget"
            )
        return self

    def for_target(self, entry: TargetBudget) -> SearchConfig:
        """This search for one entry of `targets:`."""
        return self.model_copy(
            update={
                "target": entry.target,
                "targets": None,
                "latency_budget_ms": entry.latency_budget_ms,
                "latency_budget_vs_teacher": entry.latency_budget_vs_teacher,
                "precision": entry.precision or self.precision,
                "runtime": entry.runtime or self.runtime,
            }
        )

    @property
    def target_path(self) -> str:
        """`target:`, in a search of one target (a plan's variants have one each)."""
        assert self.target is not None, "a search over several targets runs once per target"
        return self.target

    def budget_rule(self) -> str:
        """The budget as the YAML states it."""
        if self.latency_budget_ms is not None:
            return f"{self.latency_budget_ms} ms"
        return f"{self.latency_budget_vs_teacher} × the teacher's FP32 latency"

    @field_validator("space", mode="before")
    @classmethod
    def _family(cls, value: Any) -> Any:
        """The space's class by its `family:`, so errors name that class's keys."""
        if isinstance(value, dict):
            known: dict[str, type[Strict]] = {
                "mobilenetv2": MobileNetSpace,
                "teacher": TeacherSpace,
            }
            family = value.get("family", "mobilenetv2")
            if family not in known:
                raise ValueError(f"family: {family!r} is not one of {', '.join(known)}")
            return known[family].model_validate(value)
        return value


def bound_space(plan: Plan, cfg: SearchConfig) -> Space:
    """The stage's space given the data's resolution, or a teacher-derived one given the
    teacher stage's architecture (ValueError when that teacher cannot be cut: the stage's check
    reports it)."""
    space = cfg.space
    if isinstance(space, MobileNetSpace):
        return space.at(plan.config.data.image_size or 28)  # Fashion-MNIST's, when not set
    teacher = plan.stage_named("teacher")
    model = getattr(teacher.cfg, "model", None) if teacher else None
    if model is None or model.arch != "resnet_small":
        found = model.arch if model is not None else "no PyTorch model (an ONNX file?)"
        raise ValueError(
            f"family teacher cuts a resnet_small teacher; the teacher stage has {found}"
        )
    from edgekd.models.specs import ResNetSmallConfig

    arch = ResNetSmallConfig.model_validate(model.arch_kwargs())
    return space.bind(arch.widths, arch.blocks)


def target_profile(plan: Plan, cfg: SearchConfig) -> TargetProfile:
    from edgekd.config.loader import load_yaml, validate
    from edgekd.config.schema import TargetProfile

    doc = load_yaml(plan.resolve(cfg.target_path))
    return validate(TargetProfile, doc.data, doc)


def precision_for(cfg: SearchConfig, target: TargetProfile) -> str:
    return cfg.precision or ("int8" if "int8" in target.precisions else "fp32")
