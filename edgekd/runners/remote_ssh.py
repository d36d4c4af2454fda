"""A model measured on a device over SSH, the way its runner declares (`Runner.remote`).

`trtexec` (the tensorrt runner) copies the ONNX file and a build recipe to the device, builds
the engine there with trtexec (engines are not portable between GPUs or TensorRT versions),
checks its outputs on real images and times it with trtexec. `edgekd` (every other runner) runs
edgekd's own measuring entry point (`python -m edgekd.runners.measure`) on the device, the same
one the local targets use; edgekd must be installed there (`connection.python` names the
interpreter).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgekd.artifacts import sha256_path
from edgekd.config.schema import TargetProfile
from edgekd.runners import trtexec
from edgekd.runners.backends.tensorrt import DEVICE_KEYS, EngineMismatchError, build_flags
from edgekd.runners.base import Job, MeasureProtocol, batch_of, onnx_input, summarize
from edgekd.runners.measure import command_args
from edgekd.runners.ssh import Remote, RemoteError, parse_tegrastats

BUILD_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 900


def job_dir(target: TargetProfile, job: Job, batch: int | None = None) -> PurePosixPath:
    """One remote folder per model file × precision × largest batch (× DLA core and timed batch:
    DLA engines are built for one static shape)."""
    assert target.connection is not None
    dla = "" if job.dla_core is None else f":dla{job.dla_core}:{batch}"
    key = hashlib.sha256(
        f"{sha256_path(job.model)}:{job.precision}:{job.max_batch}{dla}".encode()
    ).hexdigest()[:16]
    return PurePosixPath(target.connection.workdir) / key


def engines(job: Job, batch: int) -> dict[str, tuple[str, int]]:
    """{"check": (engine, batch it runs), "time": (…)}. On the GPU one engine takes batches 1 to
    `job.max_batch`; on DLA, whose shapes are static, the check runs an engine built at
    `job.max_batch` and the timing one built at `batch`, both with the same flags."""
    if job.dla_core is None:
        engine = f"model.{job.precision}.engine"
        return {"check": (engine, job.max_batch), "time": (engine, batch)}
    stem = f"model.{job.precision}.{trtexec.dla_device(job.dla_core)}"
    return {
        "check": (f"{stem}.b{job.max_batch}.engine", job.max_batch),
        "time": (f"{stem}.b{batch}.engine", batch),
    }


def measure_edgekd(
    remote: Remote,
    target: TargetProfile,
    runtime: str,
    job: Job,
    protocol: MeasureProtocol,
    images: np.ndarray,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run `python -m edgekd.runners.measure` on the device, with the same arguments as locally."""
    assert target.connection is not None
    folder = job_dir(target, job)
    remote.mkdir(str(folder))
    remote.put(job.model, str(folder / "model.onnx"))
    with tempfile.TemporaryDirectory(prefix="edgekd-remote-") as tmp:
        local = Path(tmp)
        np.save(local / "inputs.npy", images)
        remote.put(local / "inputs.npy", str(folder / "inputs.npy"))
        on_device = replace(job, model=Path(folder / "model.onnx"), workdir=Path(folder))
        args = command_args(
            runtime, on_device, protocol, str(folder / "inputs.npy"), str(folder / "result.json")
        )
        remote.run(
            [target.connection.python, "-m", "edgekd.runners.measure", *args],
            timeout=RUN_TIMEOUT_S,
        )
        remote.get(str(folder / "result.json"), local / "result.json")
        remote.get(str(folder / "outputs.npy"), local / "outputs.npy")
        return np.load(local / "outputs.npy"), json.loads((local / "result.json").read_text())


def measure_trtexec(
    remote: Remote,
    target: TargetProfile,
    runtime: str,
    job: Job,
    protocol: MeasureProtocol,
    images: np.ndarray,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Build (once per model × precision × device folder), check, then time with trtexec."""
    conn = target.connection
    assert conn is not None
    folder = job_dir(target, job, protocol.batch)
    name, dims = onnx_input(job.model)
    shape = dims[1:]
    built = engines(job, protocol.batch)
    (check_engine, chunk), (engine, _) = built["check"], built["time"]
    remote.mkdir(str(folder))
    with tempfile.TemporaryDirectory(prefix="edgekd-trtexec-") as tmp:
        local = Path(tmp)
        manifest = _built_manifest(remote, folder, local)
        if manifest is None:
            manifest = _build(remote, target, folder, job, local, (name, shape), built)
        # the check: real images in, in chunks the engine's profile accepts; the caller
        # compares the outputs with the reference. A DLA engine takes exactly its batch, so
        # the last chunk is filled with repeated images and their outputs dropped.
        chunks = []
        for i in range(0, len(images), chunk):
            real = images[i : i + chunk]
            n = chunk if job.dla_core is not None else len(real)
            (local / "inputs.bin").write_bytes(batch_of(real, n).tobytes())
            remote.put(local / "inputs.bin", str(folder / "inputs.bin"))
            check = remote.run(
                trtexec.check_command(
                    conn.trtexec, str(folder / check_engine), name, shape, n,
                    str(folder / "inputs.bin"), str(folder / "outputs.json"), job.dla_core,
                ),
                timeout=RUN_TIMEOUT_S,
            )  # fmt: skip
            if i == 0:
                log = check.stdout.decode(errors="replace")
                _refuse_mismatch(manifest, log, str(folder / check_engine))
            remote.get(str(folder / "outputs.json"), local / "outputs.json")
            chunks.append(trtexec.parse_outputs((local / "outputs.json").read_text())[: len(real)])
        outputs = np.concatenate(chunks)
        command = trtexec.time_command(
            conn.trtexec, str(folder / engine), name, shape, protocol.batch,
            protocol.iterations, protocol.min_seconds, max(200, protocol.warmup * 10),
            str(folder / "times.json"), job.dla_core,
        )  # fmt: skip
        power, log = _timed(remote, target, command)
        remote.get(str(folder / "times.json"), local / "times.json")
        latency, compute = trtexec.parse_times((local / "times.json").read_text())
    summary = trtexec.parse_summary(log)
    extra: dict[str, Any] = {
        "engine": manifest,
        "gpu_compute_median_ms": float(np.median(compute)) if compute else None,
        "trtexec_summary": summary,
        "warmup_ms": max(200, protocol.warmup * 10),
        "power": power,
    }
    device = f"cuda ({manifest.get('gpu', 'remote GPU')})"
    if job.dla_core is not None:
        device = trtexec.dla_device(job.dla_core)
        extra["dla"] = _dla_facts(job.dla_core, manifest)
    stats = summarize(
        latency,
        runtime=runtime,
        device=device,
        precision=job.precision,
        batch=protocol.batch,
        threads=1,
        warmup=protocol.warmup,
        copies_included=True,  # trtexec's Latency is H2D + compute + D2H
        versions={"tensorrt": manifest.get("tensorrt", "unknown"), "runner": "trtexec"},
        extra=extra,
    ).to_json()
    return outputs, stats


def _dla_facts(core: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """The DLA row's core, fallback setting and where the build put the layers; a row whose
    layers all fell back says that it timed the GPU."""
    layers = manifest.get("layers")
    facts: dict[str, Any] = {
        "core": core,
        "gpu_fallback": manifest.get("gpu_fallback"),
        "layers": layers,
    }
    if layers is not None and layers["dla"] == 0:
        facts["note"] = "no layer runs on DLA: every layer fell back, this row timed the GPU"
    return facts


def _built_manifest(remote: Remote, folder: PurePosixPath, local: Path) -> dict[str, Any] | None:
    try:
        remote.get(str(folder / "engine.json"), local / "engine.json")
    except RemoteError:
        return None
    return dict(json.loads((local / "engine.json").read_text()))


def _build(
    remote: Remote,
    target: TargetProfile,
    folder: PurePosixPath,
    job: Job,
    local: Path,
    tensor: tuple[str, list[int]],
    built: dict[str, tuple[str, int]],
) -> dict[str, Any]:
    """Copy the ONNX file and a build.sh of every engine in `built` to `folder`, run it there
    and keep what trtexec logged as the engine's manifest (engine.json beside it)."""
    assert target.connection is not None
    name, shape = tensor
    remote.put(job.model, str(folder / "model.onnx"))
    fallback = target.dla_gpu_fallback
    # the GPU engine takes batches 1 to max_batch; each DLA engine one static batch; the timed
    # engine is built last, so the log's last layer placement is its own
    to_build = {built["check"][0]: job.max_batch} if job.dla_core is None else dict(built.values())
    builds = []
    for engine, batch in to_build.items():
        builds.append(
            trtexec.build_command(
                target.connection.trtexec, "model.onnx", engine, job.precision, name, shape,
                1, batch, "timing.cache", job.dla_core, fallback,
            )
        )  # fmt: skip
    (local / "build.sh").write_text(trtexec.build_script(builds))
    remote.put(local / "build.sh", str(folder / "build.sh"))
    text = remote.run(["sh", str(folder / "build.sh")], timeout=BUILD_TIMEOUT_S).stdout.decode(
        errors="replace"
    )
    manifest = {
        **trtexec.parse_build_facts(text),
        "onnx_sha256": sha256_path(job.model),
        "precision": job.precision,
        "builder_flags": build_flags(job.precision),
        "max_batch": job.max_batch,
        "recipe": "build.sh",
    }
    if job.dla_core is not None:
        manifest.update(
            dla_core=job.dla_core,
            gpu_fallback=fallback,
            engines=to_build,
            layers=trtexec.parse_layer_placement(text),
        )
    (local / "engine.json").write_text(json.dumps(manifest, indent=2))
    remote.put(local / "engine.json", str(folder / "engine.json"))
    return manifest


def _refuse_mismatch(manifest: dict[str, Any], log: str, engine: str) -> None:
    here = trtexec.parse_build_facts(log)
    diffs = [
        f"{k} {manifest[k]!r} (device now {here[k]!r})"
        for k in DEVICE_KEYS
        if k in here and k in manifest and manifest[k] != here[k]
    ]
    if diffs:
        raise EngineMismatchError(
            f"{engine} was built for {', '.join(diffs)}; engines only run where they were built. "
            f"Delete its folder on the device and measure again to rebuild it."
        )


def _timed(remote: Remote, target: TargetProfile, command: list[str]) -> tuple[dict | None, str]:
    """Run the timing command, sampling tegrastats beside it when the profile asks."""
    if target.power is None or not target.power.tegrastats:
        return None, remote.run(command, timeout=RUN_TIMEOUT_S).stdout.decode(errors="replace")
    # `timeout` bounds the sampler on the device even if this side dies
    sampler = subprocess.Popen(
        remote.argv(["timeout", str(RUN_TIMEOUT_S), "tegrastats", "--interval", "100"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        log = remote.run(command, timeout=RUN_TIMEOUT_S).stdout.decode(errors="replace")
    finally:
        sampler.terminate()
        lines, _ = sampler.communicate(timeout=30)
    return parse_tegrastats(lines.splitlines()), log
