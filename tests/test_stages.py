"""Real stages through the pipeline: a killed stage resumes from its checkpoint, the export
stage's parity gate stops a run, and a loaded teacher brings its own normalisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from edgekd import pipeline
from edgekd.cli import main
from edgekd.distill.distiller import Distiller
from tests.conftest import ROOT
from tests.test_pipeline import run_quietly, tiny_teacher

HEAD = """name: {name}
seed: 0
device: cpu
threads: 1
data: {{dataset: fashion-mnist, train_subset: 500, val_size: 100, test_subset: 200}}
"""


def pipeline_file(tmp_path: Path, name: str, stages: str) -> Path:
    weights = tiny_teacher(tmp_path)
    teacher = f"  - {{stage: teacher, model: {{arch: tiny_cnn}}, weights: {weights}}}\n"
    path = tmp_path / f"{name}.yaml"
    path.write_text(HEAD.format(name=name) + "stages:\n" + teacher + stages)
    return path


STUDENT = "  - {stage: student, model: {arch: tiny_cnn}, train: {epochs: 2, batch_size: 100}}\n"


def test_a_killed_student_stage_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    path = pipeline_file(tmp_path, "resume", STUDENT)
    straight = tmp_path / "straight"
    run_quietly(pipeline.load_plan(path), straight)

    calls = {"n": 0}
    forward = Distiller.forward

    def killed_in_epoch_2(self, *args, **kwargs):  # 5 steps per epoch: step 8 is in epoch 2
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Distiller, "forward", killed_in_epoch_2)
    out = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        run_quietly(pipeline.load_plan(path), out)
    manifest = json.loads((out / "resume" / "01_student" / "manifest.json").read_text())
    assert manifest["status"] == "running"
    assert (
        torch.load(out / "resume" / "01_student" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    )
    monkeypatch.setattr(Distiller, "forward", forward)
    log = run_quietly(pipeline.load_plan(path), out)
    assert "00_teacher unchanged" in log and "01_student: resuming an interrupted run" in log
    assert "resuming student after epoch 1/2" in log
    resumed = load_file(str(out / "resume" / "01_student" / "student" / "model.safetensors"))
    expected = load_file(str(straight / "resume" / "01_student" / "student" / "model.safetensors"))
    assert resumed.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(resumed[key], expected[key])


def test_the_export_parity_gate_stops_the_run_with_its_numbers(tmp_path, capsys):
    export = (
        "  - stage: export\n    parity_images: 50\n"
        "    tolerance: {fp32: {max_abs_diff: 1.0e-12, top1_agreement: 100},"
        " int8: {max_abs_diff: 1.0, top1_agreement: 99}}\n"
    )
    student = STUDENT.replace("epochs: 2", "epochs: 0.2")
    path = pipeline_file(tmp_path, "gate", student + export)
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "error: teacher_fp32.onnx: onnxruntime disagrees with PyTorch on 50 test images" in err
    assert "(allowed 1e-12)" in err
    manifest = json.loads((tmp_path / "runs" / "gate" / "02_export" / "manifest.json").read_text())
    assert manifest["status"] == "running"  # not done: a rerun tries again, nothing is reused


TEACHER_ONLY = """name: {name}
seed: 0
device: cpu
data: {{dataset: fashion-mnist{subset}}}
stages:
  - stage: teacher
    model: {{arch: resnet_small, widths: [32, 64, 128], blocks: [2, 2, 2]}}
    weights: {weights}
"""


@pytest.mark.slow
def test_the_default_teacher_scores_its_documented_accuracy_with_and_without_a_subset(
    tmp_path,
):
    """docs/teacher.md: 93.69 % on all 10,000 test images. Its normalisation comes from
    weights/fmnist_resnet_small.json, not from the training split in use (the subset runs
    score 500 test images only: what they check is the normalisation they used)."""
    weights = ROOT / "weights" / "fmnist_resnet_small.safetensors"
    documented = json.loads(weights.with_suffix(".json").read_text())["preprocessing"]
    bare = tmp_path / "bare.safetensors"
    shutil.copyfile(weights, bare)  # without its model.json beside it
    small = ", train_subset: 2000, test_subset: 500"
    runs = {}
    for name, subset, file in (
        ("full", "", weights),
        ("subset", small, weights),
        ("bare", small, bare),
    ):
        path = tmp_path / f"{name}.yaml"
        path.write_text(TEACHER_ONLY.format(name=name, subset=subset, weights=file))
        log = run_quietly(pipeline.load_plan(path), tmp_path / "runs")
        stage = tmp_path / "runs" / name / "00_teacher"
        meta = json.loads((stage / "manifest.json").read_text())
        used = json.loads((stage / "teacher" / "model.json").read_text())["preprocessing"]
        runs[name] = (log, meta["metrics"]["test_acc"], (used["mean"], used["std"]))
    assert runs["full"][1] == 93.69
    for name in ("full", "subset"):
        assert "fmnist_resnet_small.json" in runs[name][0]
        assert runs[name][2] == (documented["mean"], documented["std"])
    # Without its model.json the subset's statistics are used, with a warning: what every run
    # with train_subset did before.
    assert (
        "warning: teacher inputs normalised with the training split's statistics" in runs["bare"][0]
    )
    assert runs["bare"][2] != (documented["mean"], documented["std"])


def test_a_bench_gate_for_one_precision_keeps_the_defaults_of_the_others():
    from edgekd.runners.base import DEFAULT_GATE
    from edgekd.stages.bench import BenchConfig

    cfg = BenchConfig.model_validate({"min_top1_agreement": {"int8": 97}})
    assert cfg.min_top1_agreement == {**DEFAULT_GATE, "int8": 97}  # fp32 and fp16 still gated
    with pytest.raises(ValueError, match="unknown precision"):
        BenchConfig.model_validate({"min_top1_agreement": {"int4": 90}})
