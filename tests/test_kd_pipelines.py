"""Every distillation method from YAML through the stages that train: student, qat and prune.

Small subsets and short budgets; the assertions are about wiring (each term is computed in each
stage, the right teacher teaches, the extra modules stay out of the student), not accuracy.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgekd.config.schema import DataConfig
from edgekd.data.datasets import load_splits
from edgekd.distill.trainer import evaluate
from edgekd.errors import ConfigError
from edgekd.export.onnx import export_onnx
from edgekd.models import zoo
from edgekd.models.io import load_model, load_state, read_weights
from edgekd.models.specs import ModelSpec
from edgekd.pipeline import load_plan, run
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

TEACHER_SPEC = {"arch": "resnet_small", "widths": [32, 64, 128], "blocks": [2, 2, 2]}
TEACHER_WEIGHTS = "weights/fmnist_resnet_small.safetensors"
HEAD = """
seed: 0
device: cpu
data: {dataset: fashion-mnist, val_size: 200, train_subset: 600, test_subset: 300}
"""
TEACHER = f"""
  - stage: teacher
    model: {json.dumps(TEACHER_SPEC)}
    weights: {TEACHER_WEIGHTS}
"""
# MobileNetV2 ×0.5: features.3 is 16×14×14, features.6 (head) 32×7×7.
STUDENT = """
  - stage: student
    model: {arch: mobilenetv2, width: 0.5, last_channel: 32,
            blocks: [[1, 16, 1, 1], [4, 24, 2, 2], [4, 32, 2, 2]]}
    train: {epochs: 2, lr: 0.1, batch_size: 32}
"""
QAT = """
  - stage: qat
    calibration: calibration/fashion-mnist-train-256.yaml
    qat: always
    timing: null
    train: {epochs: 0.5, lr: 0.005, batch_size: 64}
"""
PRUNE = """
  - stage: prune
    ratio: 0.25
    require_speedup: false
    timing: null
    calibration: calibration/fashion-mnist-train-256.yaml
    bn_recalibration_images: 256
    train: {epochs: 0.5, lr: 0.005, batch_size: 64}
"""
MID = '{student: features.3, teacher: "0.6"}'  # 16 vs 64 channels at 14×14
LAST = '{student: features.6, teacher: "0.8"}'  # 32 vs 128 channels at 7×7
ALL_LOSSES = f"""
distill:
  losses:
    - {{name: ce, weight: 1}}
    - {{name: kd, weight: 1}}
    - {{name: mse, weight: 0.1}}
    - {{name: kd_mse, weight: 0.1}}
    - {{name: dkd, weight: 0.1}}
    - {{name: fitnet, weight: 1, pairs: [{MID}]}}
    - {{name: at, weight: 100, pairs: [{MID}, {LAST}]}}
    - {{name: ft, weight: 1, pairs: [{LAST}], paraphraser_epochs: 0.5}}
    - {{name: rkd, weight: 0.1}}
    - {{name: cckd, weight: 1}}
    - {{name: sp, weight: 100, pairs: [{LAST}]}}
    - {{name: pkt, weight: 100}}
    - {{name: crd, weight: 0.1, negatives: 64}}
    - {{name: tf_kd, weight: 1}}
"""
LOSS_NAMES = [
    "ce",
    "kd",
    "mse",
    "kd_mse",
    "dkd",
    "fitnet",
    "at",
    "ft",
    "rkd",
    "cckd",
    "sp",
    "pkt",
    "crd",
    "tf_kd",
]


def manifest(run_dir: Path, stage: str) -> dict:
    folder = next(run_dir.glob(f"*_{stage}"))
    return json.loads((folder / "manifest.json").read_text())


def run_yaml(write_yaml, text: str, out: Path) -> Path:
    path = write_yaml(text)
    plan = load_plan(path)
    run(plan, out)
    return out / plan.config.name


def test_every_loss_trains_in_student_qat_and_prune(write_yaml, tmp_path):
    text = "name: kd_all\n" + HEAD + ALL_LOSSES + "stages:" + TEACHER + STUDENT + QAT + PRUNE
    run_dir = run_yaml(write_yaml, text, tmp_path / "runs")
    for stage in ("student", "qat", "prune"):
        metrics = manifest(run_dir, stage)["metrics"]
        first = metrics["history"][0]
        assert set(LOSS_NAMES) <= set(first), stage
        assert all(math.isfinite(first[n]) for n in LOSS_NAMES), stage
        assert first["fitnet"] > 0 and first["crd"] > 0 and first["ft"] > 0
    # The summed losses still train the student (chance is 10 %; CE alone reaches ~36 % here).
    assert manifest(run_dir, "student")["metrics"]["test_acc"] > 20
    _, meta = load_model(run_dir / "03_prune" / "student")
    assert meta["quantization"] and meta["pruned"]
    # Connectors, the paraphraser and CRD's memory are not part of the saved student.
    keys = set(load_file(str(run_dir / "03_prune" / "student" / "model.safetensors")))
    assert not any(k.startswith(("connectors", "encoders", "memory_", "embed_")) for k in keys)


def test_dml_takd_unlabeled_data_and_the_label_smoothing_warning(write_yaml, tmp_path, capsys):
    teacher = TEACHER + "    label_smoothing: 0.1\n"
    student = STUDENT + (
        "    assistant:\n"
        "      model: {arch: mobilenetv2, width: 1.0, last_channel: 64,\n"
        "              blocks: [[1, 16, 1, 1], [4, 24, 2, 2], [4, 32, 2, 2]]}\n"
        "      train: {epochs: 2, lr: 0.1, batch_size: 32}\n"
    )
    distill = """
distill:
  losses: [{name: ce, weight: 0.5}, {name: kd, weight: 0.5}]
  scheme: {name: dml, peers: 2}
  unlabeled: {source: train_rest, limit: 300}
"""
    text = "name: kd_schemes\n" + HEAD + distill + "stages:" + teacher + student + QAT + PRUNE
    run_dir = run_yaml(write_yaml, text, tmp_path / "runs")
    for stage in ("student", "qat", "prune"):
        assert manifest(run_dir, stage)["metrics"]["history"][0]["dml"] > 0, stage
    student_metrics = manifest(run_dir, "student")["metrics"]
    assert student_metrics["assistant_test_acc"] > 20
    assert student_metrics["assistant_history"][0]["dml"] > 0
    assert (run_dir / "01_student" / "assistant" / "model.safetensors").exists()
    out = capsys.readouterr().out
    assert "trained with label smoothing 0.1" in out
    # Teacher 0 of the student stage is the assistant; qat/prune read the teacher stage's.
    caches = sorted((run_dir / "cache").glob("teacher0-logits-*.npy"))
    assert len(caches) == 2
    assert all(np.load(c, mmap_mode="r").shape == (900, 2, 10) for c in caches)  # 600 + 300


@pytest.fixture(scope="module")
def onnx_teacher(tmp_path_factory):
    model = zoo.build(ModelSpec.model_validate(TEACHER_SPEC), 1, 10)
    load_state(model, read_weights(ROOT / TEACHER_WEIGHTS), TEACHER_WEIGHTS)
    path = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    export_onnx(model.eval(), torch.zeros(1, 1, 28, 28), path)
    return path, model


def test_onnx_teacher_split_with_a_feature_teacher_and_byot(write_yaml, tmp_path, onnx_teacher):
    path, torch_teacher = onnx_teacher
    distill = f"""
distill:
  losses:
    - {{name: ce, weight: 1}}
    - {{name: kd, weight: 1}}
    - {{name: at, weight: 100, pairs: [{MID}]}}
  scheme: {{name: byot, exits: [features.3]}}
  teachers: [{{model: {json.dumps(TEACHER_SPEC)}, weights: {TEACHER_WEIGHTS}}}]
  multi_teacher: split
"""
    teacher = f"\n  - stage: teacher\n    onnx: {path}\n"
    export = "\n  - stage: export\n    parity_images: 300\n"
    bench = (
        "  - stage: bench\n    warmup: 2\n    iterations: 10\n    min_seconds: 0\n    rounds: 1\n"
    )
    report = "  - stage: report\n"
    targets = "targets: [targets/cpu-x86.yaml]\n"
    text = (
        "name: kd_onnx\n"
        + HEAD
        + targets
        + distill
        + "stages:"
        + teacher
        + STUDENT
        + QAT
        + export
        + bench
        + report
    )
    run_dir = run_yaml(write_yaml, text, tmp_path / "runs")
    splits = load_splits(DataConfig(val_size=200, train_subset=600, test_subset=300), seed=0)
    expected = round(evaluate(torch_teacher, splits.test, splits, torch.device("cpu")), 2)
    assert manifest(run_dir, "teacher")["metrics"]["test_acc"] == pytest.approx(expected, abs=0.34)
    for stage in ("student", "qat"):
        first = manifest(run_dir, stage)["metrics"]["history"][0]
        assert first["byot"] > 0 and first["at"] > 0 and first["kd"] > 0
    models = json.loads((run_dir / "03_export" / "onnx" / "models.json").read_text())["models"]
    teacher_row = next(m for m in models if m["role"] == "teacher")
    assert teacher_row["test_acc"] == pytest.approx(expected, abs=0.34)
    assert (run_dir / "03_export" / "onnx" / "teacher_fp32.onnx").read_bytes() == path.read_bytes()
    # The given ONNX teacher is measured and reported like any other (MACs unknown: "–").
    summary = json.loads((run_dir / "report.json").read_text())["summary"]
    assert summary["teacher"]["macs"] is None and summary["teacher"]["best"]["median_ms"] > 0
    assert "| teacher | fp32 |" in (run_dir / "report.md").read_text()


def test_a_wrong_layer_name_is_a_config_error_with_the_line(write_yaml, tmp_path):
    distill = """
distill:
  losses:
    - {name: ce, weight: 1}
    - {name: fitnet, weight: 1, pairs: [{student: features.33, teacher: "0.6"}]}
"""
    text = "name: kd_typo\n" + HEAD + distill + "stages:" + TEACHER + STUDENT
    path = write_yaml(text)
    with pytest.raises(ConfigError) as err:
        run(load_plan(path), tmp_path / "runs")
    message = str(err.value)
    line = text.splitlines().index(
        '    - {name: fitnet, weight: 1, pairs: [{student: features.33, teacher: "0.6"}]}'
    )
    assert message.startswith(f"{path}:{line + 1}: distill.losses[1].pairs[0].student:")
    assert "no module 'features.33'" in message and "did you mean features.3" in message
    assert manifest(tmp_path / "runs" / "kd_typo", "student")["status"] != "done"


@pytest.mark.parametrize(
    ("snippet", "where", "why"),
    [
        ("  scheme: byot\n", "distill.scheme.exits", "required key is missing"),
        ("  scheme: {name: bypt}\n", "distill.scheme.name", 'did you mean "byot"?'),
        ("  teachers: [{onnx: nowhere.onnx}]\n", "distill.teachers[0].onnx", "not found"),
        (
            "  teachers: [{model: {arch: resnet_small}}]\n",
            "distill.teachers[0]",
            "`model:` needs `weights:`",
        ),
        (
            f"  teachers: [{{onnx: {TEACHER_WEIGHTS}}}]\n  teacher_weights: [1, 2, 3]\n",
            "distill.teacher_weights",
            "3 weights for 2 teachers",
        ),
    ],
)
def test_distill_settings_are_checked_before_anything_runs(write_yaml, snippet, where, why):
    distill = "distill:\n  losses: [{name: ce}, {name: kd}]\n" + snippet
    path = write_yaml("name: kd_bad\n" + HEAD + distill + "stages:" + TEACHER + STUDENT)
    with pytest.raises(ConfigError) as err:
        load_plan(path)
    assert f": {where}:" in str(err.value) and why in str(err.value)


ONNX_STAGE = "\n  - stage: teacher\n    onnx: teacher.onnx\n"
ASSISTANT = STUDENT + "    assistant: {model: {arch: tiny_cnn}}\n"
EXTRA = f"{{model: {json.dumps(TEACHER_SPEC)}, weights: {TEACHER_WEIGHTS}}}"


@pytest.mark.parametrize(
    ("losses", "extra", "teacher", "student", "where", "why"),
    [
        (
            f"[{{name: at, pairs: [{MID}]}}]",
            "",
            ONNX_STAGE,
            STUDENT,
            "distill.losses[0]",
            "teacher 0 (the teacher stage's teacher) is an ONNX model",
        ),
        (
            "[{name: kd}, {name: rkd}]",
            "",
            TEACHER,
            ASSISTANT,
            "distill.losses[1]",
            "Use logit losses with `assistant:`",
        ),
        (
            "[{name: ce}, {name: tf_kd}]",
            "  unlabeled: {source: train_rest}\n",
            TEACHER,
            STUDENT,
            "distill.unlabeled",
            "add a loss that reads the teacher",
        ),
        (
            "[{name: kd}, {name: crd}]",
            f"  teachers: [{EXTRA}]\n",
            TEACHER,
            STUDENT,
            "distill.losses[1]",
            "use multi_teacher: split",
        ),
        (
            "[{name: kd}]",
            f"  teachers: [{EXTRA}, {EXTRA}]\n  multi_teacher: split\n",
            TEACHER,
            STUDENT,
            "distill.multi_teacher",
            "exactly two teachers",
        ),
        (
            "[{name: kd}]",
            f"  teachers: [{EXTRA}]\n  teacher_weights: [1, -1]\n",
            TEACHER,
            STUDENT,
            "distill.teacher_weights",
            "≥ 0 with a positive sum",
        ),
        (
            "[{name: kd}]",
            f"  teachers: [{EXTRA}]\n  multi_teacher: random\n  teacher_weights: [1, 1]\n",
            TEACHER,
            STUDENT,
            "distill.teacher_weights",
            "apply to multi_teacher: average",
        ),
    ],
)
def test_teacher_arrangements_that_cannot_work_are_refused_on_load(
    write_yaml, losses, extra, teacher, student, where, why
):
    distill = f"distill:\n  losses: {losses}\n{extra}"
    path = write_yaml("name: kd_bad\n" + HEAD + distill + "stages:" + teacher + student)
    with pytest.raises(ConfigError) as err:
        load_plan(path)
    assert f": {where}:" in str(err.value) and why in str(err.value)
