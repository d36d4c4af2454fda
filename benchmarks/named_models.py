"""Which named torchvision and timm models edgekd's compression chain handles, measured.

For each model (untrained, 3 channels, 10 classes, 64 px inputs): it builds; it exports to ONNX
and onnxruntime computes what torch computes (parity); DepGraph prunes 25 % of its channels
(rounded to 8), the pruned model still runs and its weights load into a fresh build as a later
stage loads them; NNCF quantizes it (PTQ on one batch), one QAT
step trains it, its quantizers restore from their JSON config into a fresh build, and the Q/DQ
ONNX file runs in onnxruntime. Each step is recorded as passed or failed with the first line of
its error; the failures are what `KNOWN_FAILURES` in edgekd/models/specs.py refuses at
`edgekd validate`.

    python benchmarks/named_models.py [--models torchvision:resnet18 timm:resnet10t ...]

Writes docs/benchmarks/named_models.md. Nothing here is timed against a goal; each step's
seconds are shown so a user knows what a first try costs on a CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from provenance import commit  # benchmarks/provenance.py

from edgekd.artifacts import write_text
from edgekd.runners.base import cpu_name

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks" / "named_models.md"
SIZE = 64
MODELS = [
    ("torchvision", "mobilenet_v2", {}),
    ("torchvision", "mobilenet_v3_small", {}),
    ("torchvision", "mobilenet_v3_large", {}),
    ("torchvision", "efficientnet_b0", {}),
    ("torchvision", "regnet_y_400mf", {}),
    ("torchvision", "shufflenet_v2_x0_5", {}),
    ("torchvision", "mnasnet0_5", {}),
    ("torchvision", "resnet18", {}),
    ("torchvision", "squeezenet1_1", {}),
    ("torchvision", "densenet121", {}),
    ("torchvision", "convnext_tiny", {}),
    ("torchvision", "swin_t", {}),
    ("torchvision", "vit_b_32", {"image_size": SIZE}),
    ("timm", "resnet10t", {}),
    ("timm", "mobilenetv3_small_050", {}),
    ("timm", "efficientnet_lite0", {}),
    ("timm", "lcnet_050", {}),
    ("timm", "ghostnet_100", {}),
    ("timm", "regnetx_002", {}),
    ("timm", "repvgg_a0", {}),
    ("timm", "convnext_atto", {}),
    ("timm", "edgenext_xx_small", {}),
    ("timm", "mobilevit_xxs", {}),
    ("timm", "deit_tiny_patch16_224", {"img_size": SIZE}),
]
STEPS = ("build", "export", "prune", "qat")
CHILD_TIMEOUT_S = 900


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


def check(
    arch: str,
    name: str,
    options: dict[str, Any],
    folder: Path,
    after_step: Callable[[dict[str, Any]], None] = lambda row: None,
) -> dict[str, Any]:
    """Each step's outcome for one model: {step: {ok, s, error?}}, and its parameter count;
    `after_step` gets the row so far after every step."""
    from edgekd.export.onnx import export_onnx, onnx_logits, torch_logits
    from edgekd.models import zoo
    from edgekd.models.io import load_state, resize_to_state_dict
    from edgekd.models.specs import ModelSpec
    from edgekd.prune.depgraph import prune_channels
    from edgekd.quant import nncf_qat

    spec = ModelSpec(arch=arch, name=name, options=options)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, SIZE, SIZE), torch.randint(0, 10, (8,))
    row: dict[str, Any] = {"arch": arch, "name": name}

    def build() -> None:
        row["params"] = zoo.count_params(zoo.build(spec, 3, 10))

    def export() -> None:
        model = zoo.build(spec, 3, 10).eval()
        path = folder / f"{name}.onnx"
        export_onnx(model, images[:1], path)
        gap = float(abs(onnx_logits(path, images) - torch_logits(model, images)).max())
        row["parity"] = gap
        if gap > 1e-3:
            raise AssertionError(f"onnxruntime differs from torch by {gap:.3g}")

    def prune() -> None:
        model = zoo.build(spec, 3, 10).eval()
        before = zoo.count_params(model)
        prune_channels(model, images[:1], 0.25, 8, 10)
        with torch.no_grad():
            out = model(images)
        assert out.shape == (8, 10), f"pruned model gives {tuple(out.shape)}"
        row["pruned_params"] = f"{zoo.count_params(model) / before:.2f}"
        # a later stage loads the pruned weights into a fresh build, resized to them
        state = model.state_dict()
        again = zoo.build(spec, 3, 10).eval()
        resize_to_state_dict(again, state)
        load_state(again, state, name)
        with torch.no_grad():
            gap = float((again(images) - out).abs().max())
        assert gap < 1e-5, f"the reloaded pruned model differs by {gap:.3g}"

    def qat() -> None:
        quantized = nncf_qat.quantize_inputs(zoo.build(spec, 3, 10).eval(), [images], cpu)
        quantized.train()
        opt = torch.optim.SGD(quantized.parameters(), lr=0.01)
        torch.nn.functional.cross_entropy(quantized(images), labels).backward()
        opt.step()
        quantized.eval()
        restored = nncf_qat.restore(zoo.build(spec, 3, 10).eval(), nncf_qat.config(quantized))
        restored.load_state_dict(quantized.state_dict())
        with torch.no_grad():
            logits = quantized(images)
            gap = float((restored(images) - logits).abs().max())
        assert gap < 1e-5, f"the restored quantized model differs by {gap:.3g}"
        path = folder / f"{name}_int8.onnx"
        export_onnx(nncf_qat.strip(quantized, images[:1]), images[:1], path)
        expected = logits.argmax(1)
        got = torch.from_numpy(onnx_logits(path, images)).argmax(1)
        agree = float((got == expected).float().mean())
        row["int8_agreement"] = agree

    step_fns: dict[str, Callable[[], None]] = {
        "build": build,
        "export": export,
        "prune": prune,
        "qat": qat,
    }
    for step in STEPS:
        start = time.perf_counter()
        try:
            step_fns[step]()
            row[step] = {"ok": True}
        except Exception as exc:  # the outcome is the measurement
            row[step] = {"ok": False, "error": _first_line(exc)}
            if step == "build":
                traceback.print_exc()
        row[step]["s"] = round(time.perf_counter() - start, 1)
        print(f"{arch}:{name} {step}: {row[step]}", flush=True)
        after_step(row)
        if not row["build"]["ok"]:
            break  # nothing else can run
    return row


def render(rows: list[dict[str, Any]], made: dict[str, str]) -> str:
    lines = [
        "# Named models through the compression chain",
        "",
        f"Made by `python benchmarks/named_models.py` at {made['commit']} on {made['cpu']}, "
        f"{made['date']}. Each model is untrained, 3 channels, 10 classes, {SIZE} px; each step "
        "as the module docstring of benchmarks/named_models.py describes (export: ONNX parity "
        "within 1e-3; prune: DepGraph 25 %, round to 8; qat: NNCF PTQ, a QAT step, restore "
        "from config, Q/DQ ONNX in onnxruntime). Seconds per step on this CPU.",
        "",
        "| model | params | build | export | prune | qat |",
        "|---|---:|---|---|---|---|",
    ]
    for row in rows:

        def cell(step: str, row: dict[str, Any] = row) -> str:
            outcome = row.get(step)
            if outcome is None:
                return "not run"
            took = f" ({outcome['s']} s)" if outcome.get("s") is not None else ""
            return f"ok{took}" if outcome["ok"] else f"**failed**{took}"

        params = f"{row['params']:,}" if "params" in row else "?"
        cells = " | ".join(cell(s) for s in STEPS)
        lines.append(f"| {row['arch']}: `{row['name']}` | {params} | {cells} |")
    failures = [
        (row, step) for row in rows for step in STEPS if row.get(step, {"ok": True})["ok"] is False
    ]
    lines += ["", "## Failures", ""]
    if not failures:
        lines.append("None: every step passed for every model above.")
    for row, step in failures:
        lines.append(f"- {row['arch']} `{row['name']}`, {step}: {row[step]['error']}")
    lines.append("")
    return "\n".join(lines)


def in_child(arch: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """`check` in a fresh process, so a model that exhausts memory (the kernel kills the
    process) or hangs costs its own row only; its row so far is read back from a file the
    child rewrites after every step."""
    with tempfile.TemporaryDirectory() as tmp:
        partial = Path(tmp) / "row.json"
        command = [sys.executable, __file__, "--child", json.dumps([arch, name, options])]
        command += ["--row", str(partial), "--folder", tmp]
        try:
            proc = subprocess.run(command, timeout=CHILD_TIMEOUT_S, check=False)
            why = (
                None
                if proc.returncode == 0
                else f"the process ended with {_ended(proc.returncode)}"
            )
        except subprocess.TimeoutExpired:
            why = f"no result within {CHILD_TIMEOUT_S} s"
        row = json.loads(partial.read_text()) if partial.exists() else {"arch": arch, "name": name}
    step = next((s for s in STEPS if s not in row), None)
    if why is not None and step is not None:  # the step that was running when it died
        row[step] = {"ok": False, "error": why, "s": None}
    return row


def _ended(code: int) -> str:
    if code == -signal.SIGKILL:
        return "SIGKILL (on this machine: the kernel's out-of-memory killer, see dmesg)"
    return f"signal {-code}" if code < 0 else f"exit status {code}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="*", help="arch:name pairs (default: the list in this file)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--row", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        arch, name, options = json.loads(args.child)
        check(arch, name, options, args.folder, lambda row: write_text(args.row, json.dumps(row)))
        return
    models = MODELS
    if args.models:
        options = {(a, n): o for a, n, o in MODELS}
        pairs = [m.split(":", 1) for m in args.models]
        models = [(a, n, options.get((a, n), {})) for a, n in pairs]
    made = {
        "commit": commit(),
        "cpu": cpu_name(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    rows = []
    for arch, name, options in models:
        rows.append(in_child(arch, name, options))
        write_text(DOC, render(rows, made))  # a killed run keeps the rows it has
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
