"""report.html from report.json alone: escaped, deterministic, one picture per kind of data;
`edgekd report` rebuilds it and compares two runs."""

import copy
import json

from edgekd.cli import main
from edgekd.report.build import SCHEMA_VERSION, summarize
from edgekd.report.html import render_html, warnings
from tests.report.test_report import MODELS, ROWS, row

CLASSES = ["cat", "dog", "bird"]


def report(name="p<b>"):
    models = copy.deepcopy(MODELS)
    models[0]["confusion"] = [[9, 1, 0], [0, 10, 0], [1, 0, 9]]
    models[1]["confusion"] = [[8, 2, 0], [1, 9, 0], [1, 1, 8]]
    models[1]["parity"]["top1_agreement"] = 99.5
    for model in models:
        model["test_images"] = 30
        model["parity"]["images"] = 30
    rows = [*ROWS, row("teacher", "tensorrt", None, status="skipped", target="jetson-orin-nano")]
    trials = [
        {"trial": i, "student": f"s{i}", "latency_ms": ms, "proxy_val_acc": acc,
         "latency_source": "measured", "pareto": i in (0, 2), "outcome": "ok", "preflight": "ok",
         "params": 10, "macs": 100}
        for i, (ms, acc) in enumerate([(0.1, 80.0), (0.3, 79.0), (0.2, 85.0)])
    ]  # fmt: skip
    return {
        "schema_version": SCHEMA_VERSION,
        "edgekd_version": "0",
        "created_utc": "now",
        "pipeline": {"name": name, "file": "p.yaml", "yaml": "name: p\nstages: []\n"},
        "machine": {"cpu": "cpu", "cores": 2, "os": "Linux"},
        "versions": {"torch": "x"},
        "stages": [
            {
                "stage": "teacher",
                "dir": "00_teacher",
                "wall_s": 1.0,
                "metrics": {"test_acc": 93.0, "params": 1000},
            }
        ],
        "models": models,
        "classes": CLASSES,
        "latency": rows,
        "summary": summarize(models, rows),
        "search": {
            "space_size": 12,
            "budget_ms": 0.25,
            "target": "cpu-x86",
            "runtime": "onnxruntime",
            "precision": "int8",
            "predictor": "measured",
            "objective": "constrained",
            "trials": trials,
            "chosen": trials[2],
            "notes": ["a note"],
            "seconds": {"latency": 1.0, "proxy_training": 2.0},
            "after_bench": {
                "predicted_ms": 0.2,
                "predicted_source": "measured",
                "final_measured_ms": 0.21,
                "final_precision": "int8",
                "note": "trained",
            },
        },
        "total_wall_s": 1.0,
    }


def test_the_page_is_escaped_self_contained_and_the_same_when_rebuilt():
    html = render_html(report())
    assert "p&lt;b&gt;" in html and "p<b>" not in html
    assert "<script" not in html and "<link" not in html and "src=" not in html
    assert html == render_html(report())  # no dates or random ids in the SVGs
    # accuracy vs latency, search trials, predicted vs measured, latency spread, per class,
    # confusion matrix
    assert html.count("<svg") == 6
    assert "<pre>name: p\nstages: []\n</pre>" in html


def test_a_report_without_search_or_confusion_draws_what_it_has():
    plain = report()
    plain.pop("search")
    for model in plain["models"]:
        model.pop("confusion")
    assert render_html(plain).count("<svg") == 2  # accuracy vs latency, latency spread


def test_warnings_group_skipped_rows_by_target_and_reason():
    found = warnings(report())
    skipped = [w for w in found if "not measured" in w]
    assert skipped == ["jetson-orin-nano: not measured (2 rows): no device configured"]
    assert any(w.startswith("f.onnx: onnxruntime agrees with PyTorch") for w in found)
    assert "search: a note" in found


def test_edgekd_report_rebuilds_the_files_and_compares_two_runs(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
    (a / "report.json").write_text(json.dumps(report("a")))
    changed = report("b")
    changed["summary"]["final"]["test_acc"] = 90.5
    (b / "report.json").write_text(json.dumps(changed))
    assert main(["report", str(a)]) == 0
    assert (a / "report.md").read_text().startswith("# edgekd report: a")
    assert (a / "report.html").read_text().count("<svg") == 6
    assert main(["report", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    changes = text[text.index("## Changed") : text.index("## Same")]
    assert "| final test_acc | 91.5 | 90.5 | -1 (-1.1%), worse |" in changes
    assert "final params" not in changes and "| final params | 100 | 100 | same |" in text
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no report at" in capsys.readouterr().err
