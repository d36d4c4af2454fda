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
from edgekd.runners.base import Job, MeasureProtocol, onnx_input, summarize
from edgekd.runners.measure import command_args
from edgekd.runners.ssh import Remote, RemoteError, parse_tegrastats

BUILD_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 900


def job_dir(target: TargetProfile, job: Job) -> PurePosixPath:
    """One remote folder per model file × precision × largest batch."""
    assert target.connection is not None
    key = hashlib.sha256(
        f"{sha256_path(job.model)}:{job.precision}:{job.max_batch}".encode()
    ).hexdigest()[:16]
    return PurePosixPath(target.connection.workdir) / key


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
    folder = job_dir(target, job)
    name, dims = onnx_input(job.model)
    shape = dims[1:]
    engine = f"model.{job.precision}.engine"
    remote.mkdir(str(folder))
    with tempfile.TemporaryDirectory(prefix="edgekd-trtexec-") as tmp:
        local = Path(tmp)
        manifest = _built_manifest(remote, folder, local)
        if manifest is None:
            manifest = _build(remote, conn.trtexec, folder, job, local, name, shape, engine)
        # the check: real images in, in chunks the engine's profile accepts; the caller
        # compares the outputs with the reference
        chunks = []
        for i in range(0, len(images), job.max_batch):
            chunk = np.ascontiguousarray(images[i : i + job.max_batch], np.float32)
            (local / "inputs.bin").write_bytes(chunk.tobytes())
            remote.put(local / "inputs.bin", str(folder / "inputs.bin"))
            check = remote.run(
                trtexec.check_command(
                    conn.trtexec, str(folder / engine), name, shape, len(chunk),
                    str(folder / "inputs.bin"), str(folder / "outputs.json"),
                ),
                timeout=RUN_TIMEOUT_S,
            )  # fmt: skip
            if i == 0:
                log = check.stdout.decode(errors="replace")
                _refuse_mismatch(manifest, log, str(folder / engine))
            remote.get(str(folder / "outputs.json"), local / "outputs.json")
            chunks.append(trtexec.parse_outputs((local / "outputs.json").read_text()))
        outputs = np.concatenate(chunks)
        command = trtexec.time_command(
            conn.trtexec, str(folder / engine), name, shape, protocol.batch,
            protocol.iterations, protocol.min_seconds, max(200, protocol.warmup * 10),
            str(folder / "times.json"),
        )  # fmt: skip
        power, log = _timed(remote, target, command)
        remote.get(str(folder / "times.json"), local / "times.json")
        latency, compute = trtexec.parse_times((local / "times.json").read_text())
    summary = trtexec.parse_summary(log)
    stats = summarize(
        latency,
        runtime=runtime,
        device=f"cuda ({manifest.get('gpu', 'remote GPU')})",
        precision=job.precision,
        batch=protocol.batch,
        threads=1,
        warmup=protocol.warmup,
        copies_included=True,  # trtexec's Latency is H2D + compute + D2H
        versions={"tensorrt": manifest.get("tensorrt", "unknown"), "runner": "trtexec"},
        extra={
            "engine": manifest,
            "gpu_compute_median_ms": float(np.median(compute)) if compute else None,
            "trtexec_summary": summary,
            "warmup_ms": max(200, protocol.warmup * 10),
            "power": power,
        },
    ).to_json()
    return outputs, stats


def _built_manifest(remote: Remote, folder: PurePosixPath, local: Path) -> dict[str, Any] | None:
    try:
        remote.get(str(folder / "engine.json"), local / "engine.json")
    except RemoteError:
        return None
    return dict(json.loads((local / "engine.json").read_text()))


def _build(
    remote: Remote,
    binary: str,
    folder: PurePosixPath,
    job: Job,
    local: Path,
    name: str,
    shape: list[int],
    engine: str,
) -> dict[str, Any]:
    remote.put(job.model, str(folder / "model.onnx"))
    build = trtexec.build_command(
        binary, "model.onnx", engine, job.precision, name, shape, 1, job.max_batch, "timing.cache"
    )
    (local / "build.sh").write_text(trtexec.build_script([build]))
    remote.put(local / "build.sh", str(folder / "build.sh"))
    log = remote.run(["sh", str(folder / "build.sh")], timeout=BUILD_TIMEOUT_S)
    manifest = {
        **trtexec.parse_build_facts(log.stdout.decode(errors="replace")),
        "onnx_sha256": sha256_path(job.model),
        "precision": job.precision,
        "builder_flags": build_flags(job.precision),
        "max_batch": job.max_batch,
        "recipe": "build.sh",
    }
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
