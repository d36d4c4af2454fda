"""PyTorch eager runner: the reference the exported files are checked against, timed as well."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from edgekd.runners.base import (
    Job,
    LatencyStats,
    MeasureProtocol,
    Remote,
    Takes,
    job_stats,
    register,
    time_calls,
)


@register("torch")
class TorchRunner:
    """Runs the model folder a stage saved (model.json + safetensors), not the ONNX file."""

    name: ClassVar[str]
    takes: ClassVar[Takes] = "model_dir"
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    remote: ClassVar[Remote] = "edgekd"
    why_not: ClassVar[str] = (
        " (eager INT8 is float math with fake quantizers, nothing a device runs)"
    )

    def available(self, device: str) -> str | None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            return "PyTorch sees no CUDA device"
        return None

    def precisions(self, file_precision: str) -> list[str]:
        # An NNCF model in eager mode is float math with fake quantizers: timing it says
        # nothing about INT8 on a device, so only FP32 models get a torch row.
        return ["fp32"] if file_precision == "fp32" else []

    def prepare(self, job: Job) -> Any:
        import torch

        from edgekd.models.io import load_model

        torch.set_num_threads(job.threads)
        model, _ = load_model(job.model)
        return {"model": model.eval().to(job.device), "job": job}

    def infer(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(inputs).to(session["job"].device)
            return session["model"](x).float().cpu().numpy()

    def measure(self, session: Any, protocol: MeasureProtocol, inputs: np.ndarray) -> LatencyStats:
        import torch

        model, job = session["model"], session["job"]
        x = torch.from_numpy(inputs).to(job.device)
        sync = torch.cuda.synchronize if job.device == "cuda" else (lambda: None)

        def call() -> None:
            with torch.inference_mode():
                model(x)
            sync()

        times = time_calls(call, protocol)
        return job_stats(
            times,
            self.name,
            job,
            protocol,
            inputs.shape[0],
            copies_included=False,
            versions={"torch": torch.__version__},
        )
