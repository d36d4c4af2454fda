"""Plans a pipeline (every check before any stage starts) and runs it with caching and resume."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgekd import __version__, distributed, logs
from edgekd.artifacts import (
    MANIFEST,
    Artifact,
    content_digest,
    library_versions,
    outputs_intact,
    read_json,
    read_manifest,
    sha256_json,
    write_json,
)
from edgekd.config.loader import load_yaml, validate
from edgekd.config.schema import PipelineConfig, TargetProfile, path_values
from edgekd.distill import rules
from edgekd.distill.loss import LOSSES
from edgekd.distill.scheme import SCHEMES
from edgekd.errors import ConfigError, EdgeKDError, RunDirError
from edgekd.plan import Plan, StageSpec
from edgekd.stage import STAGES, StageContext


def load_plan(path: str | Path) -> Plan:
    """Load and check everything a run needs, so a typo fails in a second, not after training."""
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise doc.error((), "a pipeline must be a mapping with name, data, stages, ...")
    config = validate(PipelineConfig, doc.data, doc)
    plan = Plan(Path(path), doc, config)

    seen: dict[str, int] = {}
    for i, term in enumerate(config.distill.losses):
        loc = ("distill", "losses", i)
        if term.name in seen:
            raise doc.error(
                (*loc, "name"),
                f"the loss {term.name!r} is listed twice (first at line "
                f"{doc.line(('distill', 'losses', seen[term.name]))}); YAML order would silently "
                "keep one. Give each term once; a term takes several feature pairs in `pairs`",
            )
        seen[term.name] = i
        try:
            loss = LOSSES.get(term.name)
        except ConfigError as exc:
            raise doc.error((*loc, "name"), str(exc)) from None
        params = dict(term.model_extra or {})
        plan.losses.append((term.name, term.weight, validate(loss.Config, params, doc, loc)))

    plan.scheme, plan.scheme_cfg = _scheme(plan)

    for i, raw in enumerate(config.stages):
        stage_loc: tuple[str, int] = ("stages", i)
        params = dict(raw)
        name = params.pop("stage", None)
        if not isinstance(name, str):
            raise doc.error(
                stage_loc, f"each stage needs `stage: NAME` (one of {', '.join(STAGES.names())})"
            )
        try:
            cls = STAGES.get(name)
        except ConfigError as exc:
            raise doc.error((*stage_loc, "stage"), str(exc)) from None
        produced = plan.produced_before(i)
        missing = [r for r in cls.requires if r not in produced]
        if missing:
            raise doc.error(
                (*stage_loc, "stage"),
                f"stage {name!r} needs {', '.join(missing)}, which no "
                "earlier stage produces; reorder the stages or add the missing one",
            )
        cfg = validate(cls.Config, params, doc, stage_loc)
        plan.stages.append(StageSpec(i, name, cls(), cfg, doc.line(stage_loc)))

    for i, target in enumerate(config.targets):
        target_path = plan.resolve(target)
        if not target_path.exists():
            raise doc.error(("targets", i), f"target profile {plan.not_found(target)}")
        target_doc = load_yaml(target_path)
        plan.targets.append(validate(TargetProfile, target_doc.data, target_doc))

    check_teacher_files(plan)
    rules.check_plan(plan)
    for spec in plan.stages:
        spec.stage.check(spec.cfg, plan, spec.index)
    _fan_out(plan)
    return plan


def _fan_out(plan: Plan) -> None:
    """The plan's variants when a stage runs several times (a search over several targets):
    the same plan with that stage's config for each; one stage may fan out."""
    fanning = [(spec, spec.stage.fan_out(spec.cfg, plan)) for spec in plan.stages]
    fanning = [(spec, runs) for spec, runs in fanning if runs]
    if not fanning:
        return
    if len(fanning) > 1:
        raise plan.doc.error(
            fanning[1][0].loc, "only one stage may run once per target; this is the second"
        )
    spec, runs = fanning[0]
    plan.fan_index = spec.index
    for label, cfg in runs:
        stages = [dataclasses.replace(s, cfg=cfg) if s is spec else s for s in plan.stages]
        plan.variants.append((label, dataclasses.replace(plan, stages=stages, variants=[])))


def _scheme(plan: Plan) -> tuple[str, Any]:
    """`distill.scheme` (a name, or a mapping with `name` and its settings), validated."""
    value = plan.config.distill.scheme
    loc = ("distill", "scheme")
    params = {} if isinstance(value, str) else dict(value)
    name = value if isinstance(value, str) else params.pop("name", None)
    if not isinstance(name, str):
        raise plan.doc.error(loc, f"needs `name:` (one of {', '.join(SCHEMES.names())})")
    try:
        scheme = SCHEMES.get(name)
    except ConfigError as exc:
        raise plan.doc.error(loc if isinstance(value, str) else (*loc, "name"), str(exc)) from None
    return name, validate(scheme.Config, params, plan.doc, loc)


def check_teacher_files(plan: Plan) -> None:
    """Each teacher of `distill.teachers` names a model with weights or an ONNX file, and the
    files exist."""
    from edgekd.models.specs import MODEL_CONFIGS, ModelSpec

    doc = plan.doc
    for i, teacher in enumerate(plan.config.distill.teachers):
        loc: tuple[str | int, ...] = ("distill", "teachers", i)
        if (teacher.onnx is None) == (teacher.model is None):
            raise doc.error(loc, "a teacher needs either `model:` + `weights:` or `onnx:`")
        if teacher.model is not None and teacher.weights is None:
            raise doc.error(loc, "`model:` needs `weights:` (extra teachers are not trained here)")
        if teacher.model is not None:
            spec = validate(ModelSpec, teacher.model, doc, (*loc, "model"))
            try:
                arch = MODEL_CONFIGS.get(spec.arch)
            except ConfigError as exc:
                raise doc.error((*loc, "model", "arch"), str(exc)) from None
            validate(arch, spec.arch_kwargs(), doc, (*loc, "model"))
        for key in ("weights", "onnx"):
            value = getattr(teacher, key)
            if value is not None and not plan.resolve(value).exists():
                raise doc.error((*loc, key), plan.not_found(value))


def key_parts(plan: Plan, spec: StageSpec, inputs: dict[str, Artifact]) -> dict[str, Any]:
    """What a stage's result depends on: its config, its inputs' hashes, the pipeline sections
    it `uses`, and the content of every file those and its config name."""
    cfg = plan.config.model_dump(mode="json")
    uses = spec.stage.uses
    files = {f"stages[{spec.index}].{k}": v for k, v in spec.stage.reads(spec.cfg, plan).items()}
    for loc, value in path_values(plan.config):
        if loc[0] in uses:
            files[".".join(map(str, loc))] = plan.resolve(value)
    return {
        "stage": spec.name,
        "config": spec.cfg.model_dump(mode="json"),
        "inputs": {name: art.sha256 for name, art in sorted(inputs.items())},
        "uses": {name: cfg[name] for name in uses if name in cfg},
        "files": {key: content_digest(path) for key, path in sorted(files.items())},
        "edgekd": __version__,
    }


def why_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What differs between the key parts of a stage's previous result and this run's."""
    if not old:
        return "config or inputs changed"
    reasons = []
    if old.get("config") != new["config"]:
        reasons.append("its config changed")
    for group, label in (("inputs", "input"), ("uses", "pipeline section"), ("files", "file")):
        before, now = old.get(group, {}), new[group]
        reasons += [
            f"{label} {name} changed" for name in sorted(set(before) | set(now))
            if before.get(name) != now.get(name)
        ]  # fmt: skip
    if old.get("edgekd") != new["edgekd"]:
        reasons.append(f"edgekd {old.get('edgekd')} → {new['edgekd']}")
    return "; ".join(reasons) or "config or inputs changed"


def claim_run_dir(plan: Plan, run_dir: Path) -> None:
    """Refuse a run folder that another pipeline file made; never mix two pipelines' results."""
    marker = run_dir / "run.json"
    source = str(plan.path.resolve())
    if marker.exists():
        owner = read_json(marker).get("pipeline_file")
        if owner != source:
            raise RunDirError(
                f"{run_dir} holds a run of {owner}, not of {source}. Nothing was changed. "
                "Give this pipeline another `name:` or pass --out DIR."
            )
    else:
        write_json(marker, {"pipeline_file": source, "name": plan.config.name})


def run(
    plan: Plan,
    out: Path | None = None,
    from_stage: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run every stage in order, reusing finished ones whose key is unchanged. A plan with
    variants runs the stages before its fanning stage once, then the rest once per variant in
    runs/<name>/<label>/, where the shared stages' folders and the cache are links."""
    console = console or Console()
    run_dir = (out or Path("runs")) / plan.config.name
    if distributed.is_main():  # under torchrun, rank 0 alone writes; the others wait
        claim_run_dir(plan, run_dir)
    distributed.barrier()
    if from_stage is not None and from_stage not in [s.name for s in plan.stages]:
        raise EdgeKDError(
            f"--from {from_stage}: no such stage in {plan.path} "
            f"(stages: {', '.join(s.name for s in plan.stages)})"
        )
    if plan.fan_index is None:
        done = _run_stages(plan, plan.stages, run_dir, {}, from_stage, console)
        print_summary(console, done.summary)
        return {"run_dir": str(run_dir), "stages": done.summary, "artifacts": done.artifacts}
    shared = plan.stages[: plan.fan_index]
    before = _run_stages(plan, shared, run_dir, {}, from_stage, console)
    variants = {}
    for label, variant in plan.variants:
        folder = run_dir / label
        for name in [s.dirname for s in shared] + ["cache"] if distributed.is_main() else []:
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / name
            if not link.is_symlink():
                (run_dir / name).mkdir(exist_ok=True)
                shutil.rmtree(link, ignore_errors=True)
                link.symlink_to(Path("..") / name, target_is_directory=True)
        distributed.barrier()
        console.rule(f"[bold]{plan.config.name} on {label}[/bold] ({folder})")
        rest = variant.stages[plan.fan_index :]
        artifacts = dict(before.artifacts)
        done = _run_stages(variant, rest, folder, artifacts, from_stage, console, before.forced)
        print_summary(console, before.summary + done.summary, f"edgekd run on {label}")
        variants[label] = {"run_dir": str(folder), "stages": done.summary}
    return {
        "run_dir": str(run_dir),
        "stages": before.summary,
        "artifacts": before.artifacts,
        "variants": variants,
    }


@dataclasses.dataclass
class _Ran:
    summary: list[dict[str, Any]]
    artifacts: dict[str, Artifact]
    forced: bool


def _run_stages(
    plan: Plan,
    stages: list[StageSpec],
    run_dir: Path,
    artifacts: dict[str, Artifact],
    from_stage: str | None,
    console: Console,
    forced: bool = False,
) -> _Ran:
    """Run `stages` in `run_dir` given the earlier stages' artifacts; `forced`: an earlier
    stage was --from, so these all rerun."""
    summary: list[dict[str, Any]] = []

    for spec in stages:
        forced = forced or spec.name == from_stage
        rerun = forced or not spec.stage.cacheable
        stage_dir = run_dir / spec.dirname
        inputs = {name: artifacts[name] for name in spec.stage.requires}
        inputs |= {name: artifacts[name] for name in spec.stage.optional if name in artifacts}
        parts = key_parts(plan, spec, inputs)
        key = sha256_json(parts)
        if not distributed.is_main():  # rank 0 decides, runs and records; see _follow
            summary.append(_follow(plan, spec, run_dir, inputs, key, console, artifacts))
            continue
        manifest = read_manifest(stage_dir)
        done = manifest is not None and manifest.get("status") == "done"
        if (
            done
            and manifest
            and manifest["key"] == key
            and not rerun
            and outputs_intact(run_dir, manifest)
        ):
            outputs = {n: Artifact.from_json(a) for n, a in manifest["outputs"].items()}
            console.print(f"[bold]{spec.dirname}[/bold] unchanged, reusing {stage_dir}")
            artifacts.update(outputs)
            row = {
                "stage": spec.name,
                "status": "cached",
                "wall_s": manifest["wall_s"],
                "metrics": manifest["metrics"],
            }
            distributed.broadcast(("cached", outputs, row))
            summary.append(row)
            continue
        distributed.broadcast(("run", None, None))
        if manifest is not None and (manifest.get("key") != key or done):
            kept = run_dir / ".previous" / f"{spec.dirname}-{manifest.get('key', 'x')[:12]}"
            shutil.rmtree(kept, ignore_errors=True)
            kept.parent.mkdir(parents=True, exist_ok=True)
            stage_dir.rename(kept)
            changed = manifest.get("key") != key
            why = why_changed(manifest.get("key_parts"), parts) if changed else "rerun"
            console.print(
                f"[yellow]{spec.dirname}: {why}; previous result moved to {kept}[/yellow]",
                highlight=False,
            )
        elif manifest is not None:
            console.print(f"[yellow]{spec.dirname}: resuming an interrupted run[/yellow]")
        stage_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "stage": spec.name,
            "index": spec.index,
            "key": key,
            "key_parts": parts,
            "status": "running",
            "config": spec.cfg.model_dump(mode="json"),
            "inputs": {n: a.to_json() for n, a in inputs.items()},
            "versions": library_versions(),
        }
        write_json(stage_dir / MANIFEST, record)
        console.rule(f"[bold]{spec.dirname}")
        ctx = StageContext(plan, spec.index, stage_dir, run_dir, inputs, key, console)
        start = time.perf_counter()
        with (
            distributed.alone(not spec.stage.distributed),  # the other ranks wait for it
            logs.third_party_to(stage_dir / "stage.log"),
        ):
            outputs = spec.stage.run(ctx, spec.cfg)
        wall = time.perf_counter() - start
        missing = set(spec.stage.produces) - set(outputs)
        assert not missing, f"stage {spec.name} did not produce {missing}"
        record.update(
            status="done",
            outputs={n: a.to_json() for n, a in outputs.items()},
            metrics=ctx.metrics,
            wall_s=round(wall, 2),
        )
        write_json(stage_dir / MANIFEST, record)
        artifacts.update(outputs)
        row = {
            "stage": spec.name,
            "status": "ran",
            "wall_s": round(wall, 2),
            "metrics": ctx.metrics,
        }
        distributed.broadcast((outputs, row))
        summary.append(row)
    return _Ran(summary, artifacts, forced)


def _follow(
    plan: Plan,
    spec: StageSpec,
    run_dir: Path,
    inputs: dict[str, Artifact],
    key: str,
    console: Console,
    artifacts: dict[str, Artifact],
) -> dict[str, Any]:
    """A stage on a rank other than 0 under torchrun: take rank 0's decision (reuse or run);
    run the stage too when it trains (`Stage.distributed`: the ranks train it together),
    with a private folder of this rank's for whatever it writes, discarded, since the
    stage's outputs are rank 0's; then take rank 0's outputs and summary row."""
    decision, outputs, row = distributed.broadcast(None)
    if decision == "cached":
        artifacts.update(outputs)
        return row
    if spec.stage.distributed:
        scratch = run_dir / ".ranks" / f"rank{distributed.rank()}" / spec.dirname
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        ctx = StageContext(plan, spec.index, scratch, run_dir, inputs, key, console)
        with logs.third_party_to(scratch / "stage.log"):  # rank 0's stage.log has the same
            spec.stage.run(ctx, spec.cfg)
        shutil.rmtree(scratch, ignore_errors=True)
    outputs, row = distributed.broadcast(None)
    artifacts.update(outputs)
    return row


def print_summary(
    console: Console, summary: list[dict[str, Any]], title: str = "edgekd run"
) -> None:
    table = Table(title=title)
    for column in ("stage", "status", "wall s", "key metrics"):
        table.add_column(column)
    for row in summary:
        shown = {k: v for k, v in row["metrics"].items() if isinstance(v, int | float | str)}
        text = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in list(shown.items())[:4]
        )
        table.add_row(row["stage"], row["status"], f"{row['wall_s']:.1f}", text)
    console.print(table)
