"""`edgekd bench` and `edgekd targets`: one ONNX file measured on target profiles outside a
pipeline, and the list of profiles with whether each can be measured from here now."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.config.loader import load_yaml, validate
from edgekd.config.schema import TargetProfile
from edgekd.errors import EdgeKDError
from edgekd.runners.base import MeasureProtocol, get_runner, onnx_input
from edgekd.runners.targets import (
    DEVICE,
    BenchModel,
    BenchPlan,
    Reference,
    measure_target,
    unreachable,
)

RANDOM_IMAGES = 64
RANDOM_SEED = 0  # random check images are the same in every run


def load_target(path: Path) -> TargetProfile:
    if not path.exists():
        raise EdgeKDError(f"target profile {path} not found; profiles ship in targets/")
    doc = load_yaml(path)
    return validate(TargetProfile, doc.data, doc)


def file_precision(path: Path) -> str:
    """int8 for a Q/DQ file, else fp32."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return "int8" if any(n.op_type == "DequantizeLinear" for n in graph.node) else "fp32"


def restrict(
    target: TargetProfile, source: str, key: str, wanted: list[str] | None
) -> TargetProfile:
    """The profile limited to the runtimes or precisions asked for, each of which it must list."""
    if not wanted:
        return target
    listed = getattr(target, key)
    unknown = [w for w in wanted if w not in listed]
    if unknown:
        raise EdgeKDError(
            f"{source} does not list {key} {', '.join(unknown)}; it lists {', '.join(listed)}"
        )
    return target.model_copy(update={key: [w for w in listed if w in wanted]})


def check_images(
    model: Path, inputs: Path | None, count: int | None = None
) -> tuple[np.ndarray, str]:
    """The images every runtime is checked on: the user's preprocessed .npy, else `count`
    random ones (default: the file's fixed batch, or RANDOM_IMAGES)."""
    if inputs is not None:
        try:
            images = np.load(inputs, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise EdgeKDError(f"--inputs {inputs}: not a .npy array ({exc})") from None
        return np.ascontiguousarray(images, dtype=np.float32), str(inputs)
    _, dims = onnx_input(model)
    batch = count or dims[0] or RANDOM_IMAGES
    shape = (batch, *(d or 1 for d in dims[1:]))
    images = np.random.default_rng(RANDOM_SEED).standard_normal(shape).astype(np.float32)
    return images, "random inputs (pass --inputs images.npy for real, preprocessed images)"


def bench_file(
    model: Path,
    targets: list[Path],
    runtimes: list[str] | None,
    precisions: list[str] | None,
    batches: list[int],
    protocol: MeasureProtocol,
    inputs: Path | None,
    workdir: Path,
    rounds: int = 1,
) -> dict[str, Any]:
    """Rows of `model` on every target; the reference is onnxruntime's CPU provider on the same
    file (there is no PyTorch model here), which every other runtime is checked against.
    `rounds`: each local row timed that many times in fresh processes (the median of their
    medians is the row's)."""
    from edgekd.runners.backends.onnxruntime import logits_function

    if not model.exists():
        raise EdgeKDError(f"model {model} not found")
    profiles = []
    for path in targets:
        target = restrict(load_target(path), str(path), "runtimes", runtimes)
        profiles.append((restrict(target, str(path), "precisions", precisions), str(path)))
    try:
        precision = file_precision(model)
        images, source = check_images(model, inputs)
        reference = Reference(logits_function(model)(images), "onnxruntime-cpu")
    except EdgeKDError:
        raise
    except Exception as exc:  # onnx / onnxruntime say why the file is unusable
        raise EdgeKDError(f"{model}: not a usable ONNX model ({str(exc)[:300]})") from None
    bench_model = BenchModel("model", model, precision)
    plan = BenchPlan(protocol=protocol, batches=batches, workdir=workdir, rounds=rounds)
    rows = []
    for target, source_file in profiles:
        rows += measure_target(
            target, source_file, [bench_model], plan, images, {"model": reference}
        )
    return {"model": str(model), "checked_on": source, "rows": rows}


def describe_targets(paths: Iterable[Path], probe: bool) -> list[dict[str, Any]]:
    """Each profile with whether it can be measured now, and per runtime why not."""
    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            target = load_target(path)
        except EdgeKDError as exc:
            out.append({"file": str(path), "name": path.stem, "reason": str(exc)})
            continue
        reason = unreachable(target, str(path), probe=probe)
        runtimes: dict[str, str | None] = {}
        device = DEVICE[target.kind]
        for runtime in target.runtimes:
            runner = get_runner(runtime)
            if reason is not None or device == "remote":
                runtimes[runtime] = reason
            elif device not in runner.devices:
                runtimes[runtime] = f"runs on {' or '.join(runner.devices)}, not {device}"
            else:
                runtimes[runtime] = runner.available(device)
        out.append(
            {
                "file": str(path),
                "name": target.name,
                "kind": target.kind,
                "precisions": target.precisions,
                "reason": reason,
                "runtimes": runtimes,
            }
        )
    return out
