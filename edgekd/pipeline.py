"""Plans a pipeline (every check before any stage starts) and runs it with caching and resume."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgekd import __version__
from edgekd.artifacts import (
    MANIFEST,
    Artifact,
    library_versions,
    outputs_intact,
    read_json,
    read_manifest,
    sha256_json,
    sha256_path,
    write_json,
)
from edgekd.config.loader import Document, load_yaml, validate
from edgekd.config.schema import PipelineConfig, Strict, TargetProfile
from edgekd.distill.specs import LOSS_CONFIGS
from edgekd.errors import ConfigError, EdgeKDError, RunDirError
from edgekd.stages import STAGES, Stage


@dataclass
class StageSpec:
    index: int
    name: str
    stage: Stage
    cfg: Any
    line: int

    @property
    def dirname(self) -> str:
        return f"{self.index:02d}_{self.name}"


@dataclass
class Plan:
    """A fully validated pipeline: its config, its stages, its loss terms and its targets."""

    path: Path
    doc: Document
    config: PipelineConfig
    stages: list[StageSpec] = field(default_factory=list)
    losses: list[tuple[str, float, Strict]] = field(default_factory=list)
    targets: list[TargetProfile] = field(default_factory=list)

    def resolve(self, value: str) -> Path:
        """A path from the YAML: relative to the working directory, else to the YAML's folder."""
        path = Path(value).expanduser()
        if path.is_absolute() or path.exists():
            return path
        beside = self.path.parent / path
        return beside if beside.exists() else path


def load_plan(path: str | Path) -> Plan:
    """Load and check everything a run needs, so a typo fails in a second, not after training."""
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise doc.error((), "a pipeline must be a mapping with name, data, stages, ...")
    config = validate(PipelineConfig, doc.data, doc)
    plan = Plan(Path(path), doc, config)

    for i, term in enumerate(config.distill.losses):
        loc = ("distill", "losses", i)
        try:
            loss_config = LOSS_CONFIGS.get(term.name)
        except ConfigError as exc:
            raise doc.error((*loc, "name"), str(exc)) from None
        params = dict(term.model_extra or {})
        plan.losses.append((term.name, term.weight, validate(loss_config, params, doc, loc)))

    produced: set[str] = set()
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
        missing = [r for r in cls.requires if r not in produced]
        if missing:
            raise doc.error(
                (*stage_loc, "stage"),
                f"stage {name!r} needs {', '.join(missing)}, which no "
                "earlier stage produces; reorder the stages or add the missing one",
            )
        cfg = validate(cls.Config, params, doc, stage_loc)
        plan.stages.append(StageSpec(i, name, cls(), cfg, doc.line(stage_loc)))
        produced.update(cls.produces)

    for i, target in enumerate(config.targets):
        target_path = plan.resolve(target)
        if not target_path.exists():
            raise doc.error(
                ("targets", i),
                f"target profile {target!r} not found (looked in "
                f"{Path.cwd()} and {plan.path.parent})",
            )
        target_doc = load_yaml(target_path)
        plan.targets.append(validate(TargetProfile, target_doc.data, target_doc))

    check_distill(plan)
    for spec in plan.stages:
        spec.stage.check(spec.cfg, plan, spec.index)
    return plan


def check_distill(plan: Plan) -> None:
    """Scheme settings, extra teachers and their files, before anything runs."""
    from edgekd.models.specs import MODEL_CONFIGS, ModelSpec

    cfg, doc = plan.config.distill, plan.doc
    if cfg.scheme == "byot" and cfg.byot is None:
        raise doc.error(("distill", "scheme"), "scheme byot needs `byot: {exits: [...]}`")
    for i, teacher in enumerate(cfg.teachers):
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
                raise doc.error(
                    (*loc, key),
                    f"{value!r} not found (looked in {Path.cwd()} and {plan.path.parent})",
                )
    count = 1 + len(cfg.teachers)
    if cfg.teacher_weights is not None:
        loc = ("distill", "teacher_weights")
        if len(cfg.teacher_weights) != count:
            raise doc.error(
                loc,
                f"{len(cfg.teacher_weights)} weights for {count} teachers "
                "(the teacher stage's, then distill.teachers)",
            )
        if min(cfg.teacher_weights) < 0 or sum(cfg.teacher_weights) <= 0:
            raise doc.error(loc, "weights must be ≥ 0 with a positive sum")
        if cfg.multi_teacher != "average":
            raise doc.error(
                loc, f"weights apply to multi_teacher: average, not {cfg.multi_teacher}"
            )
    if cfg.multi_teacher == "split" and count != 2:
        raise doc.error(
            ("distill", "multi_teacher"),
            f"split needs exactly two teachers (the teacher stage's for logits, one in "
            f"distill.teachers for features); there are {count}",
        )
    kinds = [(i, name, getattr(term, "kind", "")) for i, (name, _, term) in enumerate(plan.losses)]
    reads_teacher = [k for k in kinds if k[2] != "labels"]
    reads_features = [k for k in kinds if k[2] in ("feature", "relation")]
    if cfg.unlabeled is not None and not reads_teacher:
        raise doc.error(
            ("distill", "unlabeled"),
            "unlabeled images are taught by the teacher's soft targets: add a loss that reads "
            "the teacher (kd, dkd, ...)",
        )
    teacher_stage = next((s.cfg for s in plan.stages if s.name == "teacher"), None)
    onnx = [getattr(teacher_stage, "onnx", None) is not None] + [
        t.onnx is not None for t in cfg.teachers
    ]
    feature_teachers = [1] if cfg.multi_teacher == "split" else list(range(count))
    for i in feature_teachers:
        if onnx[i] and reads_features:
            j, name, _ = reads_features[0]
            where = "the teacher stage's teacher" if i == 0 else f"distill.teachers[{i - 1}]"
            raise doc.error(
                ("distill", "losses", j),
                f"{name} reads features, but teacher {i} ({where}) is an ONNX model that gives "
                "logits only; use a PyTorch teacher, or multi_teacher: split with a PyTorch "
                "teacher 1",
            )
    crd = [k for k in kinds if k[1] == "crd"]
    if crd and count > 1 and cfg.multi_teacher != "split":
        raise doc.error(
            ("distill", "losses", crd[0][0]),
            "crd keeps one memory bank of one teacher's embeddings; with several teachers use "
            "multi_teacher: split (teacher 1 teaches crd)",
        )


def unlabeled_digest(plan: Plan) -> str | None:
    """Identity of the `distill.unlabeled` images: each file's path, size and mtime."""
    cfg = plan.config.distill.unlabeled
    if cfg is None or cfg.source == "train_rest":
        return None
    folder = plan.resolve(cfg.source)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return sha256_json(
        [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    )


def stage_key(plan: Plan, spec: StageSpec, inputs: dict[str, Artifact]) -> str:
    """Identity of a stage's result: its config, its inputs' hashes, the globals it uses."""
    cfg = plan.config.model_dump(mode="json")
    uses = {name: cfg[name] for name in spec.stage.uses if name in cfg}
    if "targets" in spec.stage.uses:
        uses["targets"] = [t.model_dump(mode="json") for t in plan.targets]
    if "distill" in spec.stage.uses:  # the content of extra teachers, not only their paths
        uses["teacher_files"] = [
            sha256_path(plan.resolve(value))
            for t in plan.config.distill.teachers
            for value in (t.weights, t.onnx)
            if value is not None
        ]
        uses["unlabeled_files"] = unlabeled_digest(plan)
    return sha256_json(
        {
            "stage": spec.name,
            "config": spec.cfg.model_dump(mode="json"),
            "inputs": {name: art.sha256 for name, art in sorted(inputs.items())},
            "uses": uses,
            "edgekd": __version__,
        }
    )


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
    """Run every stage in order, reusing finished ones whose key is unchanged."""
    console = console or Console()
    run_dir = (out or Path("runs")) / plan.config.name
    claim_run_dir(plan, run_dir)
    if from_stage is not None and from_stage not in [s.name for s in plan.stages]:
        raise EdgeKDError(
            f"--from {from_stage}: no such stage in {plan.path} "
            f"(stages: {', '.join(s.name for s in plan.stages)})"
        )
    forced = False
    artifacts: dict[str, Artifact] = {}
    summary: list[dict[str, Any]] = []
    from edgekd.stages.base import StageContext

    for spec in plan.stages:
        forced = forced or spec.name == from_stage
        rerun = forced or not spec.stage.cacheable
        stage_dir = run_dir / spec.dirname
        inputs = {name: artifacts[name] for name in spec.stage.requires}
        key = stage_key(plan, spec, inputs)
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
            summary.append(
                {
                    "stage": spec.name,
                    "status": "cached",
                    "wall_s": manifest["wall_s"],
                    "metrics": manifest["metrics"],
                }
            )
            continue
        if manifest is not None and (manifest.get("key") != key or done):
            kept = run_dir / ".previous" / f"{spec.dirname}-{manifest.get('key', 'x')[:12]}"
            shutil.rmtree(kept, ignore_errors=True)
            kept.parent.mkdir(parents=True, exist_ok=True)
            stage_dir.rename(kept)
            why = "config or inputs changed" if manifest.get("key") != key else "rerun"
            console.print(
                f"[yellow]{spec.dirname}: {why}; previous result moved to {kept}[/yellow]"
            )
        elif manifest is not None:
            console.print(f"[yellow]{spec.dirname}: resuming an interrupted run[/yellow]")
        stage_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "stage": spec.name,
            "index": spec.index,
            "key": key,
            "status": "running",
            "config": spec.cfg.model_dump(mode="json"),
            "inputs": {n: a.to_json() for n, a in inputs.items()},
            "versions": library_versions(),
        }
        write_json(stage_dir / MANIFEST, record)
        console.rule(f"[bold]{spec.dirname}")
        ctx = StageContext(plan, spec.index, stage_dir, run_dir, inputs, key, console)
        start = time.perf_counter()
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
        summary.append(
            {"stage": spec.name, "status": "ran", "wall_s": round(wall, 2), "metrics": ctx.metrics}
        )
    print_summary(console, summary)
    return {"run_dir": str(run_dir), "stages": summary, "artifacts": artifacts}


def print_summary(console: Console, summary: list[dict[str, Any]]) -> None:
    table = Table(title="edgekd run")
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
