"""Frozen teachers: a PyTorch model (live, with hooked features, or with logits cached once per
training image and mirror image) or an ONNX file run through onnxruntime (logits only)."""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd import distributed
from edgekd.artifacts import atomic_path, read_json, write_json
from edgekd.data.datasets import Batch, ImageSet, Splits, batches, model_to_device, to_device
from edgekd.distill.hooks import capture
from edgekd.distill.terms import Outputs
from edgekd.errors import EdgeKDError

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


class Teacher:
    """Gives a teacher's outputs for a training batch; never trains the teacher.

    `model` is a PyTorch module, or None when `logits_fn` runs a foreign model (ONNX).
    `inputs` turns the student's normalised batch into the teacher's own normalisation (None:
    both are normalised alike)."""

    def __init__(
        self,
        model: nn.Module | None,
        device: torch.device,
        cached: torch.Tensor | None = None,
        logits_fn: LogitsFn | None = None,
        name: str = "teacher",
        inputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model_to_device(model.eval(), device) if model is not None else None
        if self.model is not None:
            for param in self.model.parameters():
                param.requires_grad_(False)
        self.device = device
        self.cached = cached  # N×2×classes: logits of each image as is and mirrored
        self.logits_fn = logits_fn
        self.name = name
        self.inputs = inputs

    def _images(self, batch: Batch) -> torch.Tensor:
        return batch.images if self.inputs is None else self.inputs(batch.images)

    def outputs(self, batch: Batch, keys: list[str] | None = None) -> Outputs:
        """Logits (and the features named by `keys`, which need the PyTorch model)."""
        if keys:
            assert self.model is not None, f"{self.name} gives logits only"
            with torch.no_grad(), capture(self.model, keys) as features:
                logits = self.model(to_device(self._images(batch), self.device))
            return Outputs(logits, dict(features))
        return Outputs(self.logits(batch))

    def logits(self, batch: Batch) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[batch.index, batch.flipped.long()].to(self.device)
        if self.logits_fn is not None:
            return self.logits_fn(self._images(batch)).to(self.device)
        assert self.model is not None
        with torch.no_grad():
            return self.model(to_device(self._images(batch), self.device))


def torch_logits(model: nn.Module, device: torch.device) -> LogitsFn:
    model = model_to_device(model.eval(), device)

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(to_device(images, device)).float().cpu()

    return run


def onnx_logits_fn(path: Path) -> LogitsFn:
    """An ONNX model run through onnxruntime, as a function on normalised torch batches."""
    from edgekd.runners.backends.onnxruntime import logits_function

    run = logits_function(path)
    return lambda images: torch.from_numpy(run(images.float().cpu().numpy()))


def fastest_logits(
    model: nn.Module,
    device: torch.device,
    example: torch.Tensor,
    scratch: Path,
    log: Callable[[str], None] | None = None,
) -> LogitsFn:
    """How to run a frozen teacher over a whole data set. On a CPU: exported to ONNX and run
    by onnxruntime, which computed the flagship teacher's logits for its 110,000 training views
    in less than half the time of eager PyTorch in channels-last (51 vs 114 s on the 2-core
    development CPU, docs/benchmarks/teacher_cache.md), provided the export works and agrees
    with PyTorch on `example` (the first batch); else, and on a GPU, PyTorch.
    The ONNX file lives in `scratch`, which the caller removes."""
    live = torch_logits(model, device)
    if device.type != "cpu":
        return live
    from edgekd.export.onnx import export_onnx

    say = log or (lambda _: None)
    onnx_path = scratch / "teacher.onnx"
    try:
        export_onnx(copy.deepcopy(model), example[:1], onnx_path)
        fast = onnx_logits_fn(onnx_path)
        got, want = fast(example), live(example)
    except Exception as error:  # any export or runtime failure: PyTorch still works
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        say(f"teacher logits in PyTorch: ONNX export or onnxruntime failed ({first})")
        return live
    gap = float((got - want).abs().max())
    if gap > 1e-3 * max(1.0, float(want.abs().max())):
        say(f"teacher logits in PyTorch: onnxruntime's differ from PyTorch's by {gap:.3g}")
        return live
    say(f"teacher logits in onnxruntime (within {gap:.1g} of PyTorch's on the first batch)")
    return fast


def cache_logits(
    model: nn.Module | LogitsFn | None,
    data: ImageSet,
    splits: Splits,
    device: torch.device,
    path: Path,
    key: str,
    batch_size: int = 256,
    log: Callable[[str], None] | None = None,
) -> torch.Tensor:
    """Logits of every image of `data` and of its mirror image (N×2×classes float32), computed
    once and kept on disk at `path` (.npy) as a memory-mapped array: only the rows a batch
    reads are paged in, so the cache of a million images costs no memory. `key` names the
    teacher and data they belong to; it is stored beside them (`path`.json) and a cache with
    another key or size is refused. Written to a temporary file and renamed when complete, so
    a killed run leaves no partial cache. `model` is a PyTorch module or a function from
    normalised images to logits; `splits` carries the teacher's own normalisation. A module
    runs where it runs fastest (`fastest_logits`); `log` hears which."""
    label = path.with_suffix(".json")
    if distributed.broadcast(path.exists()):  # rank 0's view, so every rank takes one path
        return _open_cache(path, label, key, len(data))
    if not distributed.is_main():  # rank 0 computes the cache, the others wait for it
        distributed.barrier()
        return _open_cache(path, label, key, len(data))
    assert model is not None, f"no cached logits at {path} and no teacher to compute them"
    for stale in path.parent.glob(f".{path.name}.*"):  # a killed run's temporary file
        shutil.rmtree(stale, ignore_errors=True)
    run = None if isinstance(model, nn.Module) else model
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory() as scratch:
        array: np.memmap | None = None
        start = 0
        for batch in batches(data, splits, batch_size):
            both = torch.cat([batch.images, batch.images.flip(3)])  # normalising commutes
            if run is None:
                assert isinstance(model, nn.Module)
                run = fastest_logits(model, device, both, Path(scratch), log)
            logits = torch.stack(run(both).float().cpu().chunk(2), dim=1).numpy()
            if array is None:
                shape = (len(data), 2, logits.shape[-1])
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            array[start : start + len(logits)] = logits
            start += len(logits)
        assert array is not None, "no images to cache logits for"
        array.flush()
        del array
        write_json(label, {"key": key, "images": len(data), "teacher": str(path.name)})
    distributed.barrier()
    return _open_cache(path, label, key, len(data))


def _open_cache(path: Path, label: Path, key: str, images: int) -> torch.Tensor:
    made = read_json(label) if label.is_file() else {}
    if made.get("key") != key or made.get("images") != images:
        raise EdgeKDError(
            f"{path}: these cached teacher logits were made for other data or another teacher "
            f"(key {made.get('key', 'missing')}, {made.get('images', '?')} images; this run "
            f"needs key {key}, {images} images). Delete {path} and {label} to recompute them"
        )
    # Copy-on-write: torch wants a writable array; nothing is ever written back to the file.
    return torch.from_numpy(np.load(path, mmap_mode="c"))
