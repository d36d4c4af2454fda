"""Measures models on a target profile: every allowed runtime × precision × batch, each checked
against the reference outputs on real images before it is timed; the fastest row that passes
the check is marked chosen. A target that cannot be reached gives rows that say why, and one
failure never stops the other rows."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.config.schema import TargetProfile
from edgekd.errors import EdgeKDError
from edgekd.runners import trtexec
from edgekd.runners.base import (
    DEFAULT_GATE,
    Job,
    MeasureProtocol,
    Runner,
    cpu_name,
    default_threads,
    get_runner,
    onnx_input,
)
from edgekd.runners.measure import MeasureError, measure_in_subprocess

# Where a profile's `kind` runs its models.
DEVICE = {"local-cpu": "cpu", "local-gpu": "cuda", "remote-ssh": "remote"}
CHECK_CHUNK = 100  # images per inference call in the check (and largest engine batch)


@dataclass(frozen=True)
class BenchModel:
    role: str  # teacher, student_fp32, final
    path: Path  # the ONNX file
    precision: str  # the file's precision: fp32, or int8 for a Q/DQ file
    torch_dir: Path | None = None  # the model folder, for runners that take one (torch)
    tensorrt_path: Path | None = None  # NNCF's Q/DQ file as exported, for runners that take it
    images: np.ndarray | None = None  # check images in this model's normalisation, if its own

    def file_for(self, runner: Runner) -> Path | None:
        """What `runner` runs of this model, or None when the model has no such file."""
        if runner.takes == "model_dir":
            return self.torch_dir
        if runner.takes == "onnx_qdq" and self.tensorrt_path is not None:
            return self.tensorrt_path
        return self.path


@dataclass(frozen=True)
class Reference:
    outputs: np.ndarray  # logits of the reference on the check images
    source: str  # "torch" (eager PyTorch), or "onnxruntime-cpu" where no PyTorch model exists


@dataclass(frozen=True)
class BenchPlan:
    protocol: MeasureProtocol
    batches: list[int]
    gate: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GATE))
    workdir: Path | None = None  # engine cache for local TensorRT
    rounds: int = 1  # each local row timed this many times, in fresh processes, interleaved


def unreachable(target: TargetProfile, source: str, probe: bool = True) -> str | None:
    """Why `target` cannot be measured from this machine now, or None when it can."""
    if target.kind == "remote-ssh":
        from edgekd.runners.ssh import Remote, config_problem

        problem = config_problem(target.connection, source)
        if problem is not None or not probe:
            return problem
        assert target.connection is not None
        return Remote(target.connection).probe()
    if target.kind == "local-gpu":
        import torch

        if not torch.cuda.is_available():
            return "no NVIDIA GPU with CUDA on this machine"
    return None


def fixed_batch(path: Path) -> int | None:
    """The batch size an ONNX file was exported with, or None when its batch axis is dynamic."""
    try:
        batch = onnx_input(path)[1][0]
    except Exception:  # an unreadable file fails later, in its own row
        return None
    return batch or None


def variants(
    target: TargetProfile, model: BenchModel, batches: list[int], fixed: int | None
) -> Iterator[tuple[dict[str, Any], str | None]]:
    """(row key, reason it is skipped or None) for every runtime × precision × batch; `fixed` is
    the file's fixed batch size, if it has one."""
    device = DEVICE[target.kind]
    for runtime in target.runtimes:
        row = {"model": model.role, "runtime": runtime}
        first = {**row, "precision": model.precision, "batch": batches[0]}
        try:
            runner = get_runner(runtime)
        except EdgeKDError as exc:
            yield first, str(exc)
            continue
        if model.file_for(runner) is None:
            yield first, "no PyTorch model for this file (an ONNX file given as it is)"
            continue
        if device != "remote" and device not in runner.devices:
            yield first, f"{runtime} runs on {' or '.join(runner.devices)}, not {device}"
            continue
        precisions = runner.precisions(model.precision)
        allowed = [p for p in precisions if p in target.precisions]
        if not precisions:
            yield (
                first,
                f"{runtime} does not time {model.precision} files" + getattr(runner, "why_not", ""),
            )
            continue
        if not allowed:
            yield (
                first,
                (
                    f"{runtime} runs a {model.precision} file as {', '.join(precisions)}; "
                    f"{target.name} allows {', '.join(target.precisions)}"
                ),
            )
            continue
        cores = trtexec.dla_cores(target) if runner.remote == "trtexec" else []
        for precision in allowed:
            for batch in batches:
                reason = None
                if fixed is not None and batch != fixed:
                    reason = f"the ONNX file has a fixed batch of {fixed}"
                yield {**row, "precision": precision, "batch": batch}, reason
                for core in cores:  # beside the GPU row, labelled so a report can tell them apart
                    dla = {"device": trtexec.dla_device(core), "dla_core": core}
                    yield (
                        {**row, "precision": precision, "batch": batch, **dla},
                        reason or _dla_unfit(precision, device),
                    )


def _dla_unfit(precision: str, device: str) -> str | None:
    """Why a DLA row cannot be measured, or None."""
    if precision not in trtexec.DLA_PRECISIONS:
        return f"DLA runs {' and '.join(trtexec.DLA_PRECISIONS)} only, not {precision}"
    if device != "remote":
        return "DLA engines are built by trtexec on a remote-ssh device; locally, GPU rows only"
    return None


def measure_target(
    target: TargetProfile,
    source: str,
    models: list[BenchModel],
    plan: BenchPlan,
    images: np.ndarray,
    references: dict[str, Reference],
) -> list[dict[str, Any]]:
    """Rows of one target: latency per model × runtime × precision × batch, or skipped/failed
    with the reason. `images` are real, preprocessed test images."""
    base = {"target": target.name, "kind": target.kind}
    reason = unreachable(target, source)
    notes: list[str] = []
    if reason is None and target.kind == "remote-ssh":
        reason, notes = _power_up(target)
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[BenchModel, np.ndarray, int]] = []  # what each row measured, for rounds
    for model in models:
        fixed = fixed_batch(model.path)
        for key, skip in variants(target, model, plan.batches, fixed):
            row = {**base, **key}
            if reason is not None or skip is not None:
                rows.append({**row, "status": "skipped", "reason": reason or skip})
                jobs.append((model, images, 0))
                continue
            own = model.images if model.images is not None else images
            max_batch = fixed or max(row["batch"], min(CHECK_CHUNK, len(own)))
            result = _measure_one(target, model, row, plan, own, references[model.role], max_batch)
            rows.append({**row, **result, **({"power_setup": notes} if notes else {})})
            jobs.append((model, own, max_batch))
    if plan.rounds > 1 and DEVICE[target.kind] != "remote":
        _more_rounds(target, rows, jobs, plan, references)
    choose(rows)
    return rows


def _more_rounds(
    target: TargetProfile,
    rows: list[dict[str, Any]],
    jobs: list[tuple[BenchModel, np.ndarray, int]],
    plan: BenchPlan,
    references: dict[str, Reference],
) -> None:
    """Time every measured row `plan.rounds - 1` more times, each time in a fresh process and
    going through all the rows before repeating one (so a slow minute of a shared machine
    lands on every model, not on one), then give each row the median of its rounds' medians,
    the rounds' medians and their spread (max − min, % of that median). The other statistics
    are those of the round whose median is the row's (the lower middle one for an even
    count)."""
    measured = [(row, job) for row, job in zip(rows, jobs, strict=True) if row["status"] == "ok"]
    rounds: list[list[dict[str, Any]]] = [[dict(row)] for row, _ in measured]
    for _ in range(plan.rounds - 1):
        for (row, (model, images, max_batch)), seen in zip(measured, rounds, strict=True):
            key = {k: row[k] for k in ("target", "kind", "model", "runtime", "precision", "batch")}
            key.update({k: row[k] for k in ("dla_core",) if k in row})
            again = _measure_one(
                target, model, key, plan, images, references[model.role], max_batch
            )
            if again["status"] == "ok":
                seen.append(again)
    for (row, _), seen in zip(measured, rounds, strict=True):
        medians = [r["median_ms"] for r in seen]
        middle = sorted(seen, key=lambda r: r["median_ms"])[(len(seen) - 1) // 2]
        median = statistics.median(medians)
        row.update({k: v for k, v in middle.items() if k not in ("target", "kind", "model")})
        row.update(
            median_ms=median,
            rounds=len(seen),
            round_medians_ms=medians,
            spread_pct=round(100 * (max(medians) - min(medians)) / median, 2),
        )


def _power_up(target: TargetProfile) -> tuple[str | None, list[str]]:
    from edgekd.runners.ssh import Remote, RemoteError, apply_power

    assert target.connection is not None
    try:
        return None, apply_power(Remote(target.connection), target.power)
    except RemoteError as exc:
        return f"power set-up failed: {exc}", []


def _measure_one(
    target: TargetProfile,
    model: BenchModel,
    row: dict[str, Any],
    plan: BenchPlan,
    images: np.ndarray,
    reference: Reference,
    max_batch: int,
) -> dict[str, Any]:
    runtime, precision, batch = row["runtime"], row["precision"], row["batch"]
    device = DEVICE[target.kind]
    protocol = replace(plan.protocol, batch=batch)
    threads = plan.protocol.threads or target.threads or default_threads()
    runner = get_runner(runtime)
    path = model.file_for(runner)
    assert path is not None  # `variants` skipped the rows without a file for this runner
    job = Job(
        model=path,
        precision=precision,
        threads=threads,
        device=device,
        workdir=plan.workdir,
        max_batch=max_batch,
        dla_core=row.get("dla_core"),
    )
    try:
        if device == "remote":
            outputs, stats = _measure_remote(target, runner, job, protocol, images)
        else:
            missing = runner.available(device)
            if missing is not None:
                return {"status": "skipped", "reason": missing}
            outputs, stats = measure_in_subprocess(runtime, job, protocol, images)
            stats["machine"] = cpu_name()
    except (MeasureError, EdgeKDError, OSError, ValueError) as exc:
        return {"status": "failed", "reason": str(exc)[-500:]}
    check = compare(outputs, reference, plan.gate[precision])
    return {"status": "ok", **stats, "check": check}


def _measure_remote(
    target: TargetProfile, runner: Runner, job: Job, protocol: MeasureProtocol, images: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    from edgekd.runners import remote_ssh
    from edgekd.runners.ssh import Remote

    assert target.connection is not None
    remote = Remote(target.connection)
    if runner.remote == "trtexec":
        outputs, stats = remote_ssh.measure_trtexec(
            remote, target, runner.name, job, protocol, images
        )
    else:
        outputs, stats = remote_ssh.measure_edgekd(
            remote, target, runner.name, job, protocol, images
        )
    stats["machine"] = f"{target.name} ({target.connection.host})"
    return outputs, stats


def compare(outputs: np.ndarray, reference: Reference, min_agreement: float) -> dict[str, Any]:
    """Top-1 agreement and largest logit gap against the reference, and whether the row passes."""
    if outputs.shape != reference.outputs.shape:
        return {
            "reference": reference.source,
            "images": len(reference.outputs),
            "passed": False,
            "reason": f"output shape {outputs.shape} != reference {reference.outputs.shape}",
        }
    agreement = float((outputs.argmax(1) == reference.outputs.argmax(1)).mean() * 100)
    return {
        "reference": reference.source,
        "images": len(outputs),
        "top1_agreement": round(agreement, 3),
        "max_abs_diff": float(np.abs(outputs - reference.outputs).max()),
        "min_top1_agreement": min_agreement,
        "passed": agreement >= min_agreement,
    }


def choose(rows: list[dict[str, Any]]) -> None:
    """Mark, per target × model × batch, the lowest-median row that passed its check."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        row.pop("chosen", None)
        if row["status"] != "ok" or not row["check"]["passed"]:
            continue
        key = (row["target"], row["model"], row["batch"])
        if key not in best or row["median_ms"] < best[key]["median_ms"]:
            best[key] = row
    for row in best.values():
        row["chosen"] = True
