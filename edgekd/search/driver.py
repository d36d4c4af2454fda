"""The torch side of the search stage: data, predictor, proxy training, the winner's pre-flight
check and what the stage writes (architecture/architecture.json, trials.json, metrics)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.artifacts import Artifact, write_json
from edgekd.contracts import Architecture
from edgekd.errors import EdgeKDError
from edgekd.search import study as studies
from edgekd.search.config import SearchConfig, bound_space, precision_for
from edgekd.search.cost import cost
from edgekd.search.predict import (
    Flops,
    Latency,
    Measured,
    Predictor,
    Roofline,
    SearchError,
    export_file,
)
from edgekd.search.space import MobileNetSpace, Student
from edgekd.search.structural import Space, TeacherCandidate, TeacherSpace
from edgekd.stage import StageContext

if TYPE_CHECKING:
    from edgekd.config.schema import TargetProfile
    from edgekd.data.datasets import Splits
    from edgekd.plan import Plan


class Timed:
    """A predictor that adds up the seconds it spends (the report splits the search's cost)."""

    def __init__(self, inner: Predictor) -> None:
        self.inner, self.name, self.seconds = inner, inner.name, 0.0

    def predict(self, candidate: Student) -> Latency:
        start = time.perf_counter()
        try:
            return self.inner.predict(candidate)
        finally:
            self.seconds += time.perf_counter() - start


def measuring(
    plan: Plan, cfg: SearchConfig, data: Splits, workdir: Path, cache: Path
) -> tuple[TargetProfile, Measured]:
    """The search stage's target and the measured predictor on it (also `edgekd profile`'s)."""
    from edgekd.bench import load_target
    from edgekd.runners.base import MeasureProtocol

    target_path = plan.resolve(cfg.target_path)
    target = load_target(target_path)
    protocol = MeasureProtocol(
        cfg.measure.warmup, cfg.measure.iterations, cfg.measure.min_seconds, 1, target.threads
    )
    measured = Measured(
        target_path,
        target.name,
        cfg.runtime or target.runtimes[0],
        precision_for(cfg, target),
        protocol,
        data,
        workdir,
        cache / "latency.json",
        repeats=cfg.measure.repeats,
    )
    return target, measured


def search(ctx: StageContext, cfg: SearchConfig) -> dict[str, Artifact]:
    from edgekd import training
    from edgekd.runners.targets import unreachable

    plan = ctx.plan
    device, data = training.prepare(plan)
    target, measured = measuring(plan, cfg, data, ctx.dir, ctx.run_dir / "cache")
    runtime, precision = measured.runtime, measured.precision
    shape = (data.input_shape[0], len(data.classes))
    notes: list[str] = []
    cannot_reach = unreachable(target, cfg.target_path)
    space = bound_space(plan, cfg)
    predictor = _predictor(ctx, cfg, space, target, measured, shape, cannot_reach, notes)
    budget, rule = _budget(ctx, cfg, data, cannot_reach)
    ctx.log(
        f"{space.size:,} students in the space; budget {rule} on "
        f"{target.name} ({runtime}, {precision})"
    )
    _smallest_fits(space, predictor, budget, rule, target.name, ctx.log)

    timed = Timed(predictor)
    proxy_seconds = 0.0
    starts = Starts(ctx, space, data)
    proxy = _proxy(ctx, cfg, starts, device)

    def scored(candidate: Student, number: int) -> float:
        nonlocal proxy_seconds
        start = time.perf_counter()
        try:
            return proxy(candidate, number)
        finally:
            proxy_seconds += time.perf_counter() - start

    settings = studies.Settings(space, budget, cfg.objective, cfg.trials, plan.config.seed, shape)
    study = studies.open_study(
        settings,
        studies.storage_url(cfg.storage, ctx.dir),
        f"{plan.config.name}-{ctx.key[:12]}",
        local=cfg.storage is None,
    )
    done = studies.finished(study)
    if done:
        ctx.log(f"resuming the study: {done} of {cfg.trials} trials finished before")
    studies.run(study, settings, timed, scored, ctx.log)

    ranked = studies.ranked(study)
    chosen, check = _preflight(ctx, ranked, space, measured, cannot_reach, notes)
    if chosen is None and ranked:
        raise EdgeKDError(
            "every student within the budget failed its pre-flight check: " + "; ".join(notes)
        )
    if chosen is None:
        raise studies.no_fit_error(study, settings, target.name)
    candidate = space.candidate(chosen.params)
    front = {t.number for t in study.best_trials} if cfg.objective == "pareto" else set()
    trials = studies.rows(study, chosen.number, front)
    write_json(ctx.dir / "trials.json", trials)
    out = ctx.dir / "architecture"
    out.mkdir(exist_ok=True)
    attrs = chosen.user_attrs
    init = starts.save_start(candidate, out / "init")
    Architecture(
        model=candidate.model(),
        source=f"search trial {chosen.number}: proxy val acc {attrs['proxy_acc']:.2f}%, "
        f"{attrs['latency_ms']:.4f} ms on {target.name} ({attrs['latency_source']})",
        init="init" if init else None,
        normalize=starts.normalize,
    ).write(out)
    size = cost(candidate, *shape)
    ctx.metrics["search"] = {
        "target": target.name,
        "runtime": runtime,
        "precision": precision,
        "budget_ms": budget,
        "budget_rule": rule,
        "predictor": predictor.name,
        "objective": cfg.objective,
        "space_size": space.size,
        "trials": trials,
        "chosen": {
            "trial": chosen.number,
            "student": candidate.describe(),
            "model": candidate.model(),
            "params": size.params,
            "macs": size.macs,
            "latency_ms": attrs["latency_ms"],
            "latency_source": attrs["latency_source"],
            "proxy_val_acc": attrs["proxy_acc"],
            "preflight": check,
        },
        "seconds": {"latency": round(timed.seconds, 1), "proxy_training": round(proxy_seconds, 1)},
        "notes": notes,
    }
    ctx.log(f"chosen: trial {chosen.number}, {candidate.describe()} ({check})")
    return {"architecture": ctx.artifact("architecture", out)}


def _budget(
    ctx: StageContext, cfg: SearchConfig, data: Splits, cannot_reach: str | None
) -> tuple[float, str]:
    """The budget in milliseconds, and how it was set: as given, or the fraction of the
    teacher's FP32 latency on the target's runtime, measured now (the teacher stage's model
    exported to FP32 ONNX, or its ONNX file, timed under the search's protocol)."""
    from edgekd.artifacts import read_json

    if cfg.latency_budget_ms is not None:
        return cfg.latency_budget_ms, f"{cfg.latency_budget_ms} ms"
    ratio = cfg.latency_budget_vs_teacher
    assert ratio is not None  # one of the two, checked when the plan was loaded
    if cannot_reach is not None:
        raise EdgeKDError(
            f"latency_budget_vs_teacher needs the teacher timed on the target: {cannot_reach}; "
            "give latency_budget_ms instead"
        )
    saved = ctx.dir / "teacher" / "latency.json"  # a resumed search keeps its budget
    if saved.exists():
        teacher_ms, runtime = read_json(saved)["median_ms"], read_json(saved)["runtime"]
    else:
        teacher_ms, runtime = _teacher_ms(ctx, cfg, data)
        write_json(saved, {"median_ms": teacher_ms, "runtime": runtime})
    budget = ratio * teacher_ms
    rule = (
        f"{budget:.4f} ms ({ratio} × the teacher's {teacher_ms:.4f} ms, FP32 on {runtime}, "
        "measured when the search started)"
    )
    return budget, rule


def _teacher_ms(ctx: StageContext, cfg: SearchConfig, data: Splits) -> tuple[float, str]:
    """The teacher's FP32 batch-1 latency on the search's target and runtime."""
    from edgekd.artifacts import read_json
    from edgekd.data.datasets import batches, sample
    from edgekd.models.io import load_model

    folder = ctx.input_path("teacher")
    if read_json(folder / "model.json").get("format") == "onnx":
        path = folder / "model.onnx"
    else:
        model, _ = load_model(folder)
        inputs = [b.images for b in batches(sample(data.train, 16, 0), data, 16)]
        path, _ = export_file(model, inputs, "fp32", ctx.dir / "teacher" / "teacher_fp32.onnx")
    plan = ctx.plan
    _, fp32 = measuring(
        plan, cfg.model_copy(update={"precision": "fp32"}), data, ctx.dir, ctx.run_dir / "cache"
    )
    medians = [fp32.run(path)["median_ms"] for _ in range(cfg.measure.repeats)]
    return float(statistics.median(medians)), fp32.runtime


def _smallest_fits(
    space: Space,
    predictor: Predictor,
    budget: float,
    rule: str,
    target: str,
    log: Callable[[str], None],
) -> None:
    """Fail in seconds, not after the trials, when even the space's smallest student is over."""
    smallest = next(space.sample(1))
    try:
        first = predictor.predict(smallest)
    except SearchError as exc:  # the trials record it; others may still work
        log(f"the smallest student {smallest.describe()} {exc}")
        return
    if first.ms > budget:
        raise EdgeKDError(
            f"no candidate meets the budget of {rule} on {target}: the space's smallest "
            f"student, {smallest.describe()}, takes {first.ms:.4f} ms ({first.source}); raise "
            "the budget or add smaller choices to `space:`"
        )
    log(f"smallest student {smallest.describe()}: {first.ms:.4f} ms ({first.source})")


def _predictor(
    ctx: StageContext,
    cfg: SearchConfig,
    space: Space,
    target: Any,
    measured: Measured,
    shape: tuple[int, int],
    cannot_reach: str | None,
    notes: list[str],
) -> Predictor:
    precision = measured.precision
    if cfg.predictor == "roofline":
        return Roofline(target.peak, precision, shape)
    if cfg.predictor == "lut":
        assert isinstance(space, MobileNetSpace)  # checked when the plan was loaded
        from edgekd.artifacts import read_json
        from edgekd.search import lut

        assert cfg.lut is not None  # checked when the plan was loaded
        path = ctx.plan.resolve(cfg.lut)
        if not path.exists():
            raise EdgeKDError(
                f"latency table {ctx.plan.not_found(cfg.lut)}; build it on the target with "
                f"`edgekd profile {ctx.plan.path}`"
            )
        table = lut.Table.model_validate(read_json(path))
        if cannot_reach is None:
            now = lut.Profiler(measured, shape, ctx.dir / "probe").probe(space)
            lut.refuse_other_device(table, now, path, f"edgekd profile {ctx.plan.path}")
        else:
            notes.append(f"latency table {cfg.lut} not checked against the device: {cannot_reach}")
        return lut.LookupTable(table, shape)
    if cannot_reach is not None:
        peak = target.peak
        if peak.roofline_ready:
            note = (
                f"{target.name} cannot be measured now ({cannot_reach}); latencies are "
                "predicted (roofline)"
            )
            notes.append(note)
            ctx.log(f"warning: {note}")
            return Roofline(peak, precision, shape)
        raise EdgeKDError(
            f"the search cannot time candidates on {target.name}: {cannot_reach}; and its "
            "profile has no `peak:` figures for the roofline predictor"
        )
    if cfg.predictor == "flops":
        anchor = next(space.sample(1))
        return Flops(anchor, measured.predict(anchor).ms, shape)
    return measured


class Starts:
    """Where a candidate's training starts: random weights, or (a teacher space with
    `inherit: true`) the teacher's, cut to the candidate (`edgekd/search/inherit.py`), fed
    with the teacher's own normalisation."""

    def __init__(self, ctx: StageContext, space: Space, data: Splits) -> None:
        from edgekd import training

        self.teacher: Any = None
        self.normalize: dict[str, list[float]] | None = None
        self.splits = data
        if isinstance(space, TeacherSpace) and space.inherit:
            self.teacher, meta = training.load_input_model(ctx, "teacher")
            pre = meta.get("preprocessing") or {}
            if "mean" in pre and "std" in pre:
                self.normalize = {"mean": list(pre["mean"]), "std": list(pre["std"])}
                self.splits = data.normalized_by(pre["mean"], pre["std"])
        self.seed = ctx.plan.config.seed

    def model(self, candidate: Student) -> Any:
        from edgekd import training
        from edgekd.data.datasets import batches, sample
        from edgekd.models.specs import ModelSpec

        if self.teacher is None:
            return training.build_model(ModelSpec.model_validate(candidate.model()), self.splits)
        from edgekd.search import inherit

        assert isinstance(candidate, TeacherCandidate)
        images = [
            b.images for b in batches(sample(self.splits.train, 512, self.seed), self.splits, 128)
        ]
        shape = self.splits.input_shape[0], len(self.splits.classes)
        return inherit.cut(self.teacher, candidate, *shape, images).train()

    def save_start(self, candidate: Student, folder: Path) -> bool:
        """Write the chosen student's starting weights for the student stage (when they are
        the teacher's); whether there are any."""
        from edgekd import training
        from edgekd.models.io import save_model
        from edgekd.models.specs import ModelSpec

        if self.teacher is None:
            return False
        spec = ModelSpec.model_validate(candidate.model())
        meta = training.model_meta(spec, self.splits, role="cut from the teacher")
        save_model(self.model(candidate), folder, meta)
        return True


def _proxy(
    ctx: StageContext, cfg: SearchConfig, starts: Starts, device: Any
) -> Callable[[Student, int], float]:
    from edgekd import training
    from edgekd.data.datasets import sample
    from edgekd.distill.trainer import evaluate
    from edgekd.models.io import save_model
    from edgekd.models.specs import ModelSpec

    data = starts.splits
    splits = dataclasses.replace(
        data, train=sample(data.train, cfg.proxy.train_subset, ctx.plan.config.seed)
    )

    def proxy(candidate: Student, number: int) -> float:
        spec = ModelSpec.model_validate(candidate.model())
        model = starts.model(candidate)
        key = f"trial{number}"
        fresh = starts.teacher is None
        training.train(
            ctx, model, cfg.proxy, splits, device, f"trial {number}", fresh=fresh, history_key=key
        )
        ctx.metrics.pop(key, None)
        training.checkpoint(ctx, key).unlink(missing_ok=True)
        save_model(model, ctx.dir / "proxies" / key, training.model_meta(spec, splits))
        return round(evaluate(model, splits.val, splits, device), 2)

    return proxy


def _preflight(
    ctx: StageContext,
    ranked: list[Any],
    space: Space,
    measured: Measured,
    cannot_reach: str | None,
    notes: list[str],
) -> tuple[Any, str]:
    """The best trial whose proxy-trained student exports (FP32 within the export stage's parity
    gate, INT8 agreement reported) and runs on the target; the next best when one does not."""
    from edgekd.models.io import load_model

    for trial in ranked:
        candidate = space.candidate(trial.params)
        source = trial.user_attrs.get("duplicate_of", trial.number)
        try:
            model, _ = load_model(ctx.dir / "proxies" / f"trial{source}")
            path = measured.export(candidate, ctx.dir / "preflight", trained=model)
            exported = "exports"
            if measured.precision != "fp32":
                agreement = measured.last_parity["top1_agreement"]
                exported += (
                    f" (FP32 within the parity gate; {measured.precision} after PTQ of the proxy "
                    f"agrees with PyTorch on {agreement:.1f} % top-1, not gated: the export stage "
                    "gates the final model)"
                )
            if cannot_reach is not None:
                return trial, f"{exported}; not run: {cannot_reach}"
            measured.run(path)
            return trial, f"{exported} and runs on {measured.runtime}"
        except SearchError as exc:
            note = f"trial {trial.number} ({trial.user_attrs['student']}) {exc}; next best taken"
            notes.append(note)
            ctx.log(note)
    return None, ""
