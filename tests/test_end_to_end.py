"""The real chain, every stage, on a small subset: real NNCF, torch-pruning, onnxruntime and
OpenVINO; then a rerun that reuses everything, and the other stage order (prune before qat)."""

import json
import shutil
import statistics
import tarfile
from pathlib import Path

import onnx
import pytest

from edgekd.cli import main
from tests.conftest import ROOT, TOL

pytestmark = pytest.mark.slow
SMOKE = ROOT / "tests" / "data" / "smoke.yaml"
SMOKE_INT8_AGREEMENT = 97.0  # smoke.yaml's export tolerance and bench gate for INT8
ACC_FLOOR = 25.0  # % on 1,000 test images after 2 epochs on 2,000 (see the first test)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["run", str(SMOKE), "--out", str(out)]) == 0
    return out / "smoke"


def test_report_holds_every_stage_with_real_numbers(smoke_run):
    report = json.loads((smoke_run / "report.json").read_text())
    assert report["schema_version"] == 1
    assert [s["stage"] for s in report["stages"]] == [
        "teacher",
        "student",
        "qat",
        "prune",
        "export",
        "bench",
    ]
    stages = {s["stage"]: s["metrics"] for s in report["stages"]}
    assert stages["teacher"]["test_acc"] > 55  # trained here, from the YAML (chance: 10 %)
    # Floors well under what this subset reached in two runs here (student 45.9 / 42.0, qat
    # 46.7 / 42.2, prune 43.7 / 35.7 %; training on 2 cores is not bit-reproducible) and well
    # over chance (10 %), where a broken loss, quantizer or recovery lands.
    assert stages["student"]["test_acc"] > ACC_FLOOR
    assert stages["qat"]["test_acc"] > ACC_FLOOR
    assert stages["qat"]["ptq_test_acc"] > ACC_FLOOR
    assert stages["prune"]["test_acc"] > ACC_FLOOR
    assert stages["prune"]["params"] < stages["prune"]["params_before"]
    for name in ("teacher", "student", "qat", "prune"):
        assert stages[name]["params"] > 0 and stages[name]["macs"] > 0
    assert {"torch", "nncf", "torch-pruning", "onnx", "onnxruntime", "python"} <= set(
        report["versions"]
    )
    summary = report["summary"]
    assert summary["final"]["precision"] == "int8" and summary["final"]["test_acc"] > ACC_FLOOR
    assert summary["final"]["bytes"] < summary["teacher"]["bytes"]
    assert (smoke_run / "report.md").read_text().startswith("# edgekd report: smoke")
    # each exported model's graph memory and test-split confusion matrix
    for model in report["models"]:
        memory, confusion = model["memory"], model["confusion"]
        assert 0 < memory["peak_activation_bytes"] <= memory["peak_activation_bytes_as_written"]
        assert memory["unsized_tensors"] == 0 and memory["weight_bytes"] > 0
        assert sum(map(sum, confusion)) == model["test_images"]
        hits = sum(confusion[i][i] for i in range(len(confusion)))
        assert round(100 * hits / model["test_images"], 2) == model["test_acc"]
    assert report["classes"][0] == "T-shirt/top" and "stage: teacher" in report["pipeline"]["yaml"]
    assert summary["final"]["peak_activation_bytes"] < summary["teacher"]["peak_activation_bytes"]


def test_the_ladder_and_the_pruning_decision_are_in_the_report(smoke_run):
    report = json.loads((smoke_run / "report.json").read_text())
    ladder = report["steps"]["ladder"]
    rungs = {r["rung"]: r for r in ladder["rungs"]}
    assert list(rungs)[:2] == ["fp32", "ptq"] and list(rungs)[-1] == "qat"  # qat: always
    assert ladder["qat"] == {"run": True, "why": "qat: always"}
    for name in ("fp32", "ptq"):  # timed on cpu-x86, the pipeline's first local target
        assert rungs[name]["latency"]["median_ms"] > 0
        assert "onnxruntime on cpu-x86" in rungs[name]["latency"]["source"]
    assert rungs["qat"]["latency"]["same_graph_as"] == list(rungs)[-2]
    assert rungs["ptq"]["test_acc"] == report["stages"][2]["metrics"]["ptq_test_acc"]
    (pruning,) = report["steps"]["pruning"]
    assert pruning["kept"] and pruning["ratio"] == 0.25 and pruning["importance"] == "group_norm"
    md = (smoke_run / "report.md").read_text()
    assert "## INT8 ladder" in md and "## Pruning" in md and "| ptq |" in md
    html = (smoke_run / "report.html").read_text()
    assert "<h2>INT8 ladder</h2>" in html and "KD-QAT ran: qat: always" in html


def test_the_html_report_is_one_file_with_its_pictures(smoke_run):
    html = (smoke_run / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "edgekd report: smoke" in html
    # self-contained: no script, stylesheet or image fetched from anywhere
    assert "<script" not in html and "<link" not in html and "src=" not in html
    # accuracy vs latency, latency spread, per-class accuracy, confusion matrix
    assert html.count("<svg") == 4
    assert "not measured" in html  # the GPU and Jetson targets, by reason


def test_exported_models_pass_checker_and_parity(smoke_run):
    index = json.loads((smoke_run / "04_export" / "onnx" / "models.json").read_text())
    roles = {m["role"]: m for m in index["models"]}
    assert set(roles) == {"teacher", "student_fp32", "final"}
    for role, model in roles.items():
        onnx.checker.check_model(str(smoke_run / "04_export" / "onnx" / model["file"]))
        # the final INT8 model against smoke.yaml's own int8 gate: these barely trained
        # students' near-tied logits flip under INT8 rounding on 1-2 % of images (98.6 % seen)
        least = SMOKE_INT8_AGREEMENT if role == "final" else TOL["int8_top1_agreement"]
        assert model["parity"]["top1_agreement"] >= least
        assert model["test_images"] == 1000
    assert roles["teacher"]["parity"]["max_abs_diff"] < TOL["onnx_fp32"]


def test_latency_rows_measured_or_skipped_with_reason(smoke_run):
    rows = json.loads((smoke_run / "05_bench" / "bench.json").read_text())["rows"]
    cpu = [r for r in rows if r["target"] == "cpu-x86"]
    measured = {
        (m, rt) for m in ("teacher", "student_fp32", "final") for rt in ("onnxruntime", "openvino")
    }
    measured |= {("teacher", "torch"), ("student_fp32", "torch")}  # eager PyTorch: FP32 only
    assert {(r["model"], r["runtime"]) for r in cpu if r["status"] == "ok"} == measured
    torch_int8 = next(r for r in cpu if r["model"] == "final" and r["runtime"] == "torch")
    assert torch_int8["status"] == "skipped" and "fake quantizers" in torch_int8["reason"]
    for row in (r for r in cpu if r["status"] == "ok"):
        assert row["iterations"] >= 20 and row["median_ms"] > 0 and row["threads"] >= 1
        assert row["median_ms"] <= row["p90_ms"] <= row["p99_ms"]
        # every runtime was checked against eager PyTorch on real test images before timing
        check = row["check"]
        assert check["reference"] == "torch" and check["images"] == 500
        assert check["passed"] == (check["top1_agreement"] >= check["min_top1_agreement"])
        # FP32 differs from PyTorch by float reordering only; onnxruntime's INT8 passed the
        # export stage's parity gate. OpenVINO's INT8 rounds differently and may flip near-ties
        # of this barely trained model, so its verdict is only checked to follow the numbers.
        if row["precision"] == "fp32" or row["runtime"] == "onnxruntime":
            assert check["passed"], row
    for model in ("teacher", "student_fp32", "final"):
        ok = [r for r in cpu if r["model"] == model and r["status"] == "ok"]
        (chosen,) = [r for r in ok if r.get("chosen")]
        assert chosen["median_ms"] == min(r["median_ms"] for r in ok if r["check"]["passed"])
    jetson = [r for r in rows if r["target"] == "jetson-orin-nano"]
    assert jetson and all(
        r["status"] == "skipped" and "connection.host" in r["reason"] for r in jetson
    )
    assert all(r["status"] in ("skipped", "ok") for r in rows if r["target"] == "gpu")
    report = json.loads((smoke_run / "report.json").read_text())
    best = report["summary"]["final"]["best"]
    final_chosen = next(r for r in cpu if r["model"] == "final" and r.get("chosen"))
    assert (
        best["runtime"] == final_chosen["runtime"]
        and best["median_ms"] == final_chosen["median_ms"]
    )


def test_deploy_writes_a_bundle_and_tarball(smoke_run, tmp_path, capsys):
    assert main(["deploy", str(smoke_run), "--target", "targets/jetson-orin-nano.yaml",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    bundle = tmp_path / "jetson-orin-nano"
    manifest = json.loads((bundle / "manifest.json").read_text())
    index = json.loads((smoke_run / "04_export" / "onnx" / "models.json").read_text())
    final = next(m for m in index["models"] if m["role"] == "final")
    # a TensorRT target gets NNCF's Q/DQ file as exported: TensorRT folds and fuses it itself
    assert (bundle / "model.onnx").read_bytes() == (
        smoke_run / "04_export" / "onnx" / final["file_tensorrt"]
    ).read_bytes()
    assert (
        manifest["model"]["precision"] == "int8"
        and manifest["model"]["test_acc"] == final["test_acc"]
    )
    assert "--int8" in (bundle / "build.sh").read_text()
    assert (bundle / "labels.txt").read_text().splitlines()[0] == "T-shirt/top"
    assert (
        json.loads((bundle / "preprocess.json").read_text())["std"] == final["preprocessing"]["std"]
    )
    with tarfile.open(tmp_path / "jetson-orin-nano.tar.gz") as tar:
        assert "jetson-orin-nano/build.sh" in tar.getnames()
    assert "tarball" in capsys.readouterr().out


def test_bench_command_on_an_exported_model(smoke_run, tmp_path):
    model = smoke_run / "04_export" / "onnx" / "student_fp32_fp32.onnx"
    out = tmp_path / "rows.json"
    args = ["--runtime", "openvino", "--batch", "1", "2", "--iterations", "10", "--rounds", "3"]
    args += ["--min-seconds", "0", "--out", str(out)]
    code = main(["bench", str(model), "--target", "targets/cpu-x86.yaml", *args])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["runtime"], r["batch"], r["status"]) for r in rows] == [
        ("openvino", 1, "ok"), ("openvino", 2, "ok"),
    ]  # fmt: skip
    assert all(r["check"]["reference"] == "onnxruntime-cpu" and r["check"]["passed"] for r in rows)
    # three rounds, each row in a fresh process per round: the median of their medians
    for r in rows:
        assert r["rounds"] == 3 and len(r["round_medians_ms"]) == 3
        assert r["median_ms"] == statistics.median(r["round_medians_ms"])
        spread = 100 * (max(r["round_medians_ms"]) - min(r["round_medians_ms"])) / r["median_ms"]
        assert r["spread_pct"] == round(spread, 2)


def test_rerun_reuses_every_finished_stage(smoke_run, capsys):
    assert main(["run", str(SMOKE), "--out", str(smoke_run.parent)]) == 0
    out = capsys.readouterr().out
    for dirname in ("00_teacher", "01_student", "02_qat", "03_prune", "04_export", "05_bench"):
        assert f"{dirname} unchanged, reusing" in out


def test_prune_before_qat_works_too(smoke_run, tmp_path):
    teacher = smoke_run / "00_teacher" / "teacher" / "model.safetensors"
    text = SMOKE.read_text().replace("name: smoke", "name: smoke_prune_first")
    text = text.replace("    weights: null\n", f"    weights: {teacher}\n")
    head, stages = text.split("stages:\n")
    blocks = stages.split("  - stage: ")
    order = {b.split("\n")[0]: b for b in blocks[1:]}
    order["prune"] = order["prune"].replace(
        "    calibration: calibration/fashion-mnist-train-256.yaml\n", ""
    )
    chosen = ["teacher", "student", "prune", "qat", "export"]
    path = tmp_path / "prune_first.yaml"
    path.write_text(head + "stages:\n" + "".join("  - stage: " + order[n] for n in chosen))
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "smoke_prune_first"
    manifest = json.loads((run / "03_qat" / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["outputs"]["student"]["meta"]["quantized"]
    index = json.loads((run / "04_export" / "onnx" / "models.json").read_text())
    final = next(m for m in index["models"] if m["role"] == "final")
    assert final["precision"] == "int8"
    pruned = json.loads((run / "02_prune" / "manifest.json").read_text())["metrics"]
    assert pruned["params"] < pruned["params_before"]
    assert all(c % 8 == 0 for c in pruned["channels"] if c != 10)
    shutil.rmtree(run)


def test_cli_run_of_a_missing_dataset_says_where_it_looked(tmp_path, monkeypatch, capsys):
    from edgekd.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("EDGEKD_DATA", str(tmp_path / "env"))
    text = (
        SMOKE.read_text()
        .replace("name: smoke", "name: nodata")
        .replace("  val_size: 200\n", "  val_size: 200\n  root: /nonexistent/fmnist\n")
    )
    path = tmp_path / "nodata.yaml"
    path.write_text(text)
    assert main(["run", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found" in err and "/nonexistent/fmnist" in err
    assert str(tmp_path / "env") in err and "apt-get install dataset-fashion-mnist" in err
    assert not Path(tmp_path / "runs" / "nodata" / "00_teacher" / "teacher").exists()
