"""`edgekd optimize`: edgekd's exact Q/DQ rewrite applied to a Q/DQ ONNX file another tool made
(NNCF, onnxruntime's quantizer, ModelOpt), kept only where onnxruntime shows that it computes
what the input did, with both files' latency measured on a target in the same run.

The steps are the export stage's: constant weight QuantizeLinear nodes are folded into int8
initializers (`export/onnx.py` `store_int8_weights`), then `export/qdq.py` rewrites the graph and
says, per node it left, why. The result is run against the input in onnxruntime on the user's
images or on seeded random ones. A result that fails onnx.checker, does not load in onnxruntime
or disagrees beyond the tolerance is never written: the output is then the input, byte for
byte, and the command says why.

Measured on the hand-made NNCF baseline's INT8 MobileNetV2 x0.35 at 224 px (issue 12): 2.70 ms
in onnxruntime vs 0.41 ms in OpenVINO as exported: onnxruntime fuses nothing of NNCF's graph.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.artifacts import atomic_path
from edgekd.errors import EdgeKDError
from edgekd.runners.base import MeasureProtocol

if TYPE_CHECKING:
    from rich.console import Console

    from edgekd.stages.export import Tolerance

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Integer kernels onnxruntime's CPU provider runs once it has fused a Q/DQ pattern
# (onnxruntime/core/optimizer/qdq_transformer); what the rewrite is for.
INTEGER_OPS = (
    "QLinearConv",
    "ConvInteger",
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
)
DEFAULT_TARGET = Path("targets/cpu-x86.yaml")


class OptimizeInputError(EdgeKDError):
    """A file `edgekd optimize` cannot work on: missing, not ONNX, no Q/DQ nodes, unrunnable."""


@dataclass(frozen=True)
class BenchSpec:
    """Where and how both files are timed (`edgekd bench`'s protocol)."""

    targets: list[Path] = field(default_factory=lambda: [DEFAULT_TARGET])
    runtimes: list[str] | None = None  # None: every runtime the profile lists
    protocol: MeasureProtocol = field(default_factory=MeasureProtocol)
    rounds: int = 3  # > 1: the two files' rows are timed interleaved, in fresh processes


@dataclass(frozen=True)
class OptimizeJob:
    model: Path  # the Q/DQ file another tool made
    out: Path  # where the result goes (may be `model` itself)
    inputs: Path | None = None  # .npy of preprocessed images; None: seeded random ones
    tolerance: Tolerance | None = None  # None: the export stage's INT8 gate
    int8_weights: str = "auto"  # the export stage's `int8_weights` choice
    bench: BenchSpec | None = field(default_factory=BenchSpec)  # None: no timing


def default_tolerance() -> Tolerance:
    """The export stage's INT8 parity gate (one place for the default: stages/export.py)."""
    from edgekd.stages.export import ExportConfig

    return ExportConfig().tolerance["int8"]


def optimize(job: OptimizeJob) -> dict[str, Any]:
    """Rewrite `job.model` into `job.out`, or copy it there unchanged with the reason."""
    import onnxruntime as ort

    from edgekd.bench import load_target

    # onnxruntime warns about every unused initializer other exporters leave; noise here
    ort.set_default_logger_severity(3)
    src = job.model
    ops = _read(src)
    for target in job.bench.targets if job.bench else []:
        load_target(target)  # a wrong --target fails now, not after the rewrite
    tol = job.tolerance or default_tolerance()
    images, source = _images(src, job.inputs)
    try:
        reference = _logits(src, images)
    except Exception as exc:  # onnxruntime says why it cannot load or run the input
        raise OptimizeInputError(
            f"onnxruntime cannot run {src} on these inputs ({str(exc)[:300]}); check that "
            "--inputs holds preprocessed images of the model's input shape"
        ) from None
    result: dict[str, Any] = {
        "input": str(src),
        "output": str(job.out),
        "checked_on": source,
        "tolerance": tol.model_dump(),
    }
    with tempfile.TemporaryDirectory(prefix="edgekd-optimize-") as tmp:
        work = Path(tmp)
        candidate, reason = _rewrite(job, ops, work, result)
        if candidate is not None:
            candidate, reason = _checked(candidate, images, reference, tol, result)
        result["integer_ops"] = {"before": integer_ops(src, work / "ort_in.onnx")}
        if candidate is not None:
            result["integer_ops"]["after"] = integer_ops(candidate, work / "ort_out.onnx")
        result.update(changed=candidate is not None, reason=reason)
        _write(job, candidate)
    result["bench"] = _bench(job, images, reference) if job.bench and candidate else None
    if job.bench and candidate is None:
        result["bench_skipped"] = "not timed: the output is the input"
    return result


def _read(path: Path) -> Counter[str]:
    """Op counts of a readable ONNX file with Q/DQ nodes; anything else is a user error."""
    import onnx

    if not path.is_file():
        raise OptimizeInputError(f"{path} not found; give the path of a Q/DQ .onnx file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, or an external-data file missing
        raise OptimizeInputError(
            f"{path} is not an ONNX model ({str(exc)[:200]}); give a .onnx file"
        ) from None
    ops = Counter(n.op_type for n in model.graph.node)
    if not any(ops[op] for op in QDQ_OPS):
        raise OptimizeInputError(
            f"{path}: nothing to optimize: no QuantizeLinear/DequantizeLinear nodes (an FP32 "
            "model); quantize it first (NNCF, onnxruntime.quantization.quantize_static with "
            "QuantFormat.QDQ, ModelOpt) and give the Q/DQ file"
        )
    return ops


def _images(model: Path, inputs: Path | None) -> tuple[np.ndarray, str]:
    from edgekd.bench import RANDOM_IMAGES, RANDOM_SEED, check_images
    from edgekd.runners.base import onnx_input

    fixed = onnx_input(model)[1][0]
    # a file exported with batch 1 is run image by image, so it is checked on as many images
    images, source = check_images(model, inputs, RANDOM_IMAGES if fixed in (0, 1) else fixed)
    if inputs is None:
        source = (
            f"{len(images)} random inputs (standard normal, seed {RANDOM_SEED}; pass --inputs "
            "images.npy for real, preprocessed images)"
        )
    return images, source


def _logits(path: Path, images: np.ndarray) -> np.ndarray:
    """The first output of `path` in onnxruntime's CPU provider on `images`."""
    from edgekd.runners.backends.onnxruntime import logits_function

    return logits_function(path)(images)


def _rewrite(
    job: OptimizeJob, ops: Counter[str], work: Path, result: dict[str, Any]
) -> tuple[Path | None, str | None]:
    """(the rewritten file, None), or (None, why there is none); fills `result` with what each
    step did."""
    import onnx

    from edgekd.export.onnx import store_int8_weights
    from edgekd.export.qdq import optimize_qdq
    from edgekd.stages.export import ExportConfig

    folded, rewritten = work / "folded.onnx", work / "rewritten.onnx"
    try:
        onnx.save(onnx.load(str(job.model)), str(folded))  # one file even with external data
        store_int8_weights(folded)
    except Exception as exc:  # over protobuf's 2 GB, or onnxruntime/onnx.checker refused it
        raise OptimizeInputError(
            f"{job.model}: onnxruntime cannot load it ({str(exc)[:300]})"
        ) from None
    after = Counter(n.op_type for n in onnx.load(str(folded)).graph.node)
    result["weights_folded"] = ops["QuantizeLinear"] - after["QuantizeLinear"]
    uint8 = ExportConfig.model_validate({"int8_weights": job.int8_weights}).uint8_weights()
    try:
        report = optimize_qdq(folded, rewritten, uint8)
    except Exception as exc:  # a graph the rewrite cannot handle: leave it, say why
        result.update(rewrites={}, skipped=[])
        return None, f"the rewrite failed ({type(exc).__name__}: {str(exc)[:300]})"
    result["skipped"] = report.pop("skipped")
    result["rewrites"] = report
    if not any(report.values()) and not result["weights_folded"]:
        return None, "nothing to rewrite: every rewrite left the graph as it was"
    return rewritten, None


def _checked(
    candidate: Path, images: np.ndarray, reference: np.ndarray, tol: Tolerance, result: dict
) -> tuple[Path | None, str | None]:
    """(`candidate`, None) when onnxruntime runs it within `tol` of the input, else (None, why);
    the numbers go into `result["check"]`."""
    try:
        got = _logits(candidate, images)
    except Exception as exc:  # the rewrite made something onnxruntime refuses: keep the input
        return None, f"onnxruntime cannot run the rewritten file ({str(exc)[:300]})"
    if got.shape != reference.shape:
        result["check"] = {"passed": False}
        return None, f"the rewritten file's output shape {got.shape} != {reference.shape}"
    diff = float(np.abs(got - reference).max()) if got.size else 0.0
    top1 = None
    if got.ndim == 2:  # a classifier's (batch, classes) logits
        top1 = float((got.argmax(1) == reference.argmax(1)).mean() * 100)
    passed = diff <= tol.max_abs_diff and (top1 is None or top1 >= tol.top1_agreement)
    result["check"] = {
        "images": len(got),
        "max_abs_diff": diff,
        "top1_agreement": top1,
        "passed": passed,
    }
    if passed:
        return candidate, None
    agreement = (
        ""
        if top1 is None
        else (f", top-1 agreement {top1:.2f} % (required {tol.top1_agreement} %)")
    )
    return None, (
        f"the rewritten file disagrees with the input on the {len(got)} check inputs: max "
        f"|diff| {diff:.3g} (allowed {tol.max_abs_diff}){agreement}"
    )


def integer_ops(path: Path, optimized: Path) -> dict[str, int]:
    """Integer kernels in the graph onnxruntime runs (ORT_ENABLE_ALL, saved to `optimized`)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3  # its warning about saving NCHWc graphs is expected here
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    return {op: ops[op] for op in INTEGER_OPS if ops[op]}


def _write(job: OptimizeJob, candidate: Path | None) -> None:
    """The rewritten file, or the input's own bytes, renamed into place."""
    source = candidate or job.model
    if candidate is None and job.out.resolve() == job.model.resolve():
        return  # the input stays where it is, untouched
    with atomic_path(job.out) as tmp:
        shutil.copyfile(source, tmp)


def _bench(job: OptimizeJob, images: np.ndarray, reference: np.ndarray) -> list[dict[str, Any]]:
    """Rows of both files on every target, checked against the input file's onnxruntime
    outputs; with `rounds` > 1 each row is timed again, interleaved with the other file's."""
    from edgekd.bench import load_target, restrict
    from edgekd.runners.targets import BenchModel, BenchPlan, Reference, measure_target

    assert job.bench is not None
    spec = job.bench
    models = [BenchModel("input", job.model, "int8"), BenchModel("optimized", job.out, "int8")]
    ref = Reference(reference, "onnxruntime-cpu (input file)")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekd-optimize-engines-") as engines:
        plan = BenchPlan(
            spec.protocol, [spec.protocol.batch], workdir=Path(engines), rounds=spec.rounds
        )
        for path in spec.targets:
            target = restrict(load_target(path), str(path), "runtimes", spec.runtimes)
            refs = {"input": ref, "optimized": ref}
            rows += measure_target(target, str(path), models, plan, images, refs)
    return rows


def pairs(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(input row, optimized row) per target × runtime × precision × batch."""
    key = ("target", "runtime", "precision", "batch")
    after = {tuple(r[k] for k in key): r for r in rows if r["model"] == "optimized"}
    return [(r, after.get(tuple(r[k] for k in key))) for r in rows if r["model"] == "input"]


def render(result: dict[str, Any], console: Console) -> None:
    """What happened, for people: rewrites, skipped nodes, the check, integer ops, latency."""
    from rich.table import Table

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    say(f"{result['input']} → {result['output']}")
    done = {k: v for k, v in result.get("rewrites", {}).items() if v}
    say(f"weight QuantizeLinear nodes folded into int8 initializers: {result['weights_folded']}")
    say("rewrites: " + (", ".join(f"{k} {v}" for k, v in done.items()) or "none applied"))
    for reason in result.get("skipped", []):
        say(f"  left as it was: {reason}")
    check = result.get("check")
    if check and "max_abs_diff" in check:
        top1 = check["top1_agreement"]
        tol = result["tolerance"]
        say(
            f"check on {result['checked_on']}: max |diff| {check['max_abs_diff']:.3g} "
            f"(allowed {tol['max_abs_diff']})"
            + ("" if top1 is None else f", top-1 agreement {top1:.2f} % (required ")
            + ("" if top1 is None else f"{tol['top1_agreement']} %)")
            + f": {'passed' if check['passed'] else 'FAILED'}"
        )
    ops = result["integer_ops"]
    if "after" in ops:
        names = sorted(set(ops["before"]) | set(ops["after"]))
        detail = ", ".join(
            f"{n} {ops['before'].get(n, 0)} → {ops['after'].get(n, 0)}" for n in names
        )
        total = f"{sum(ops['before'].values())} → {sum(ops['after'].values())}"
        say(f"integer ops onnxruntime runs: {total}" + (f" ({detail})" if detail else ""))
    if result["changed"]:
        say(f"wrote {result['output']} (rewritten)")
    else:
        say(f"left unchanged: {result['reason']}; {result['output']} is the input as it was")
    if result.get("bench_skipped"):
        say(result["bench_skipped"])
    if not result.get("bench"):
        return
    table = Table(title="latency, batch 1: median ms, both files timed in the same run")
    for col in ("target", "runtime", "precision", "before", "after", "speed-up", "check"):
        table.add_column(col)
    untimed = []
    for before, after in pairs(result["bench"]):
        if before["status"] != "ok" and (after is None or after["status"] != "ok"):
            untimed.append(f"  {before['target']} {before['runtime']}: {before['reason']}")
            continue
        table.add_row(
            before["target"],
            before["runtime"],
            before["precision"],
            _ms(before),
            _ms(after),
            _speedup(before, after),
            f"{_verdict(before)}/{_verdict(after)}",
        )
    console.print(table)
    for line in untimed:
        say(line)


def _ms(row: dict[str, Any] | None) -> str:
    if row is None or row["status"] != "ok":
        return "–" if row is None else row["status"]
    return f"{row['median_ms']:.3f}"


def _speedup(before: dict[str, Any], after: dict[str, Any] | None) -> str:
    if after is None or before["status"] != "ok" or after["status"] != "ok":
        return "–"
    return f"×{before['median_ms'] / after['median_ms']:.2f}"


def _verdict(row: dict[str, Any] | None) -> str:
    if row is None or row["status"] != "ok":
        return "–"
    return "pass" if row["check"]["passed"] else "FAIL"
