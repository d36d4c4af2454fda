"""`edgekd deploy`: the final model of a run as a bundle for one target (ONNX, build and run
recipes, manifest, labels, preprocessing), pushed and built over SSH when the profile names a
host, else written as a tarball with instructions."""

from __future__ import annotations

import datetime as dt
import shutil
import tarfile
from pathlib import Path
from typing import Any

from edgekd import __version__
from edgekd.artifacts import atomic_path, find_output, sha256_path, write_json, write_text
from edgekd.config.schema import TargetProfile
from edgekd.contracts import ExportedModel, ModelsIndex, Role
from edgekd.errors import EdgeKDError
from edgekd.runners import trtexec
from edgekd.runners.backends.tensorrt import build_flags
from edgekd.runners.base import get_runner, onnx_input

MODEL = "model.onnx"


def find_export(run_dir: Path) -> tuple[Path, ModelsIndex, ExportedModel]:
    """(the exported models' folder, its index, the final model's entry), found through the
    run's manifests: the last finished stage that produced the `onnx` artifact."""
    found = find_output(run_dir, "onnx")
    if found is None:
        raise EdgeKDError(
            f"{run_dir}: no finished stage of this run produced exported models (read every "
            f"*/manifest.json there); run the pipeline first: edgekd run PIPELINE.yaml"
        )
    folder = run_dir / found[1].path
    index = ModelsIndex.read(folder)
    final = index.get(Role.FINAL)
    if final is None:
        raise EdgeKDError(f"{folder / ModelsIndex.FILE}: no final model in the export index")
    return folder, index, final


def builds_on_device(target: TargetProfile) -> bool:
    """Whether one of the target's runners builds engines with trtexec on the device."""
    return any(get_runner(r).remote == "trtexec" for r in target.runtimes)


def takes_qdq(target: TargetProfile) -> bool:
    """Whether a runner of the target takes NNCF's Q/DQ file as exported (TensorRT)."""
    return any(get_runner(r).takes == "onnx_qdq" for r in target.runtimes)


def recipe_precision(target: TargetProfile, precision: str) -> str:
    """The precision the engines of a `precision` model file are built at on `target`."""
    precisions = ["fp16", "fp32"] if precision == "fp32" else [precision]
    return next((p for p in precisions if p in target.precisions), precisions[0])


def recipe_dla_cores(target: TargetProfile, precision: str) -> list[int]:
    """The DLA cores that get an engine beside the GPU's (DLA builds FP16 and INT8 only)."""
    chosen = recipe_precision(target, precision)
    return trtexec.dla_cores(target) if chosen in trtexec.DLA_PRECISIONS else []


def recipes(
    target: TargetProfile, precision: str, input_name: str, shape: list[int]
) -> dict[str, str]:
    """build.sh and run.sh for targets whose engines are built on the device (trtexec): the GPU
    engine, and one engine per DLA core the profile asks for (`dla_rows`), each timed."""
    if not builds_on_device(target):
        return {}
    binary = target.connection.trtexec if target.connection else "trtexec"
    chosen = recipe_precision(target, precision)
    builds, runs = [], []
    for core in [None, *recipe_dla_cores(target, precision)]:
        tag = "" if core is None else f".{trtexec.dla_device(core)}"
        engine = f"model.{chosen}{tag}.engine"
        builds.append(
            trtexec.build_command(
                binary, MODEL, engine, chosen, input_name, shape, 1, 1, "timing.cache",
                core, target.dla_gpu_fallback,
            )
        )  # fmt: skip
        runs.append(
            trtexec.time_command(
                binary, engine, input_name, shape, 1, 1000, 5, 500, f"times{tag}.json", core
            )
        )
    return {"build.sh": trtexec.build_script(builds), "run.sh": trtexec.build_script(runs)}


def bundle(run_dir: Path, target: TargetProfile, source: str, out: Path) -> Path:
    """Write the bundle folder `out` (atomically) and return it."""
    onnx_dir, index, final = find_export(run_dir)
    model = onnx_dir / final.file
    if takes_qdq(target) and final.file_tensorrt:
        model = onnx_dir / final.file_tensorrt  # TensorRT folds and fuses Q/DQ itself
    name, dims = onnx_input(model)
    scripts = recipes(target, final.precision, name, dims[1:])
    with atomic_path(out) as tmp:
        tmp.mkdir()
        shutil.copyfile(model, tmp / MODEL)
        for file, text in scripts.items():
            (tmp / file).write_text(text)
        (tmp / "labels.txt").write_text("\n".join(index.classes) + "\n")
        write_json(tmp / "preprocess.json", {**final.preprocessing, "input": name})
        write_json(
            tmp / "manifest.json",
            {
                "edgekd_version": __version__,
                "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "run_dir": str(run_dir.resolve()),
                "target": {
                    "file": source,
                    **target.model_dump(mode="json", exclude={"connection"}),
                },
                "model": {
                    "file": MODEL,
                    "sha256": sha256_path(model),
                    "precision": final.precision,
                    "builder_flags": build_flags(final.precision) if scripts else None,
                    "dla": _dla_entry(target, final.precision) if scripts else None,
                    "input": {"name": name, "shape": dims},
                    **final.model_dump(include={"params", "macs", "bytes", "test_acc"}),
                },
            },
        )
        write_text(tmp / "README.txt", instructions(target, bool(scripts), final.precision))
    return out


def _dla_entry(target: TargetProfile, precision: str) -> dict[str, Any] | None:
    cores = recipe_dla_cores(target, precision)
    if not cores:
        return None
    engines = [
        f"model.{recipe_precision(target, precision)}.{trtexec.dla_device(c)}.engine" for c in cores
    ]
    return {"cores": cores, "gpu_fallback": target.dla_gpu_fallback, "engines": engines}


def instructions(target: TargetProfile, tensorrt: bool, precision: str) -> str:
    lines = [
        f"edgekd bundle for {target.name} ({target.description})",
        "",
        "model.onnx       the final model (Q/DQ INT8 or FP32), input NCHW float32",
        "preprocess.json  how images become inputs: x = (pixel * scale - mean) / std",
        "labels.txt       class names, one per output index",
        "manifest.json    provenance: edgekd version, run, hashes, accuracy",
    ]
    if tensorrt:
        lines += [
            "build.sh         builds the TensorRT engine on the device (engines are specific to",
            "                 the GPU and TensorRT version, so build it where it runs)",
            "run.sh           times the engine with trtexec",
        ]
        fallback = ", layers it cannot run on the GPU" if target.dla_gpu_fallback else ""
        for core in recipe_dla_cores(target, precision):
            lines += [
                f"                 both also do DLA core {core}: --useDLACore={core}{fallback}",
            ]
        lines += [
            "",
            "On the device:  tar xzf BUNDLE.tar.gz && cd BUNDLE && sh build.sh && sh run.sh",
        ]
    return "\n".join(lines) + "\n"


def deploy(
    run_dir: Path, target: TargetProfile, source: str, out_dir: Path | None
) -> dict[str, Any]:
    """Bundle, then push and build over SSH when the profile names a host, else a tarball."""
    out_dir = out_dir or run_dir / "deploy"
    folder = bundle(run_dir, target, source, out_dir / target.name)
    conn = target.connection
    if target.kind == "remote-ssh" and conn is not None and conn.host is not None:
        return push(folder, target, source)
    tarball = out_dir / f"{target.name}.tar.gz"
    with atomic_path(tarball) as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(folder, arcname=target.name)
    return {"bundle": str(folder), "tarball": str(tarball), "pushed": False}


def push(folder: Path, target: TargetProfile, source: str) -> dict[str, Any]:
    from edgekd.runners.ssh import Remote, RemoteError, config_problem

    problem = config_problem(target.connection, source)
    if problem is not None:
        raise EdgeKDError(problem)
    assert target.connection is not None
    remote = Remote(target.connection)
    where = f"{target.connection.workdir}/{target.name}"
    try:
        remote.mkdir(where)
        for file in sorted(folder.iterdir()):
            remote.put(file, f"{where}/{file.name}")
        log = ""
        if (folder / "build.sh").exists():
            log = remote.run(["sh", f"{where}/build.sh"], timeout=1800).stdout.decode(
                errors="replace"
            )
    except RemoteError as exc:
        raise EdgeKDError(f"deploy to {target.name} failed: {exc}") from None
    return {
        "bundle": str(folder),
        "pushed": True,
        "remote_dir": where,
        "engine": trtexec.parse_build_facts(log) if log else None,
    }
