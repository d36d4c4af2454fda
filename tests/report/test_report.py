"""The summary picks measured rows only, computes ratios, and the markdown shows every row."""

from edgekd.report.build import SCHEMA_VERSION, fastest, summarize
from edgekd.report.markdown import render

MODELS = [
    {
        "role": "teacher",
        "precision": "fp32",
        "test_acc": 93.0,
        "params": 1000,
        "macs": 10_000,
        "bytes": 4000,
        "file": "t.onnx",
        "parity": {"max_abs_diff": 1e-7, "top1_agreement": 100},
    },
    {
        "role": "final",
        "precision": "int8",
        "test_acc": 91.5,
        "params": 100,
        "macs": 1000,
        "bytes": 400,
        "file": "f.onnx",
        "parity": {"max_abs_diff": 0.01, "top1_agreement": 99.5},
    },
]


def row(model, runtime, median, status="ok", target="cpu-x86", passed=True):
    base = {
        "target": target,
        "kind": "local-cpu",
        "model": model,
        "precision": "fp32",
        "runtime": runtime,
        "batch": 1,
        "status": status,
    }
    if status != "ok":
        return {**base, "reason": "no device configured"}
    return {
        **base,
        "median_ms": median,
        "p90_ms": median,
        "p99_ms": median,
        "mean_ms": median,
        "ci95_ms": 0.0,
        "threads": 2,
        "iterations": 200,
        "copies_included": False,
        "check": {
            "reference": "torch",
            "images": 500,
            "top1_agreement": 100.0 if passed else 90.0,
            "max_abs_diff": 0.0,
            "passed": passed,
        },
    }


ROWS = [
    row("teacher", "onnxruntime", 2.0),
    row("teacher", "openvino", 1.0),
    row("final", "onnxruntime", 0.8),
    row("final", "openvino", 0.2),
    row("final", "tensorrt", None, status="skipped", target="jetson-orin-nano"),
]


def test_fastest_ignores_skipped_rows():
    assert fastest(ROWS, "final")["runtime"] == "openvino"
    assert fastest(ROWS, "final", runtime="tensorrt") is None


def test_fastest_never_takes_a_row_that_failed_its_check():
    rows = [*ROWS, row("final", "onnxruntime-trt", 0.01, passed=False)]
    assert fastest(rows, "final")["median_ms"] == 0.2


def test_summary_ratios():
    s = summarize(MODELS, ROWS)
    assert s["ratios"] == {
        "bytes": 0.1,
        "params": 0.1,
        "onnxruntime_latency": 0.4,
        "best_latency_vs_teacher_onnxruntime": 0.1,
    }
    assert s["accuracy_drop_pp"] == 1.5
    assert s["teacher"]["best"] == {
        "target": "cpu-x86",
        "runtime": "openvino",
        "precision": "fp32",
        "batch": 1,
        "median_ms": 1.0,
    }


def test_markdown_shows_measured_rows_and_skipped_ones_by_reason():
    report = {
        "schema_version": SCHEMA_VERSION,
        "edgekd_version": "0",
        "created_utc": "now",
        "pipeline": {"name": "p", "file": "p.yaml"},
        "machine": {"cpu": "cpu", "cores": 2, "os": "Linux"},
        "versions": {"torch": "x"},
        "stages": [
            {
                "stage": "teacher",
                "dir": "00_teacher",
                "wall_s": 1.0,
                "metrics": {"test_acc": 93.0, "params": 1000, "macs": 10000},
            }
        ],
        "models": MODELS,
        "latency": ROWS,
        "summary": summarize(MODELS, ROWS),
        "total_wall_s": 1.0,
    }
    text = render(report)
    assert "- jetson-orin-nano: no device configured (final fp32 tensorrt)" in text
    assert "| jetson-orin-nano |" not in text  # not a table row of its own
    assert (
        "| final | int8 | 91.50 | 100 | 1,000 | 400 | 0.800 | 0.200 ms (openvino, cpu-x86) |"
        in text
    )


def test_chosen_lines_say_which_precision_won():
    from edgekd.report.markdown import chosen_lines

    rows = [
        {**row("student_fp32", "onnxruntime", 0.07), "chosen": True},
        {**row("final", "openvino", 0.10), "precision": "int8", "chosen": True},
    ]
    (text,) = [line for line in chosen_lines(rows) if line.startswith("- cpu-x86")]
    assert "int8 in openvino, 0.100 ms" in text and "×0.70" in text
    assert "the FP32 student is faster here" in text
    rows[0]["median_ms"] = 0.2
    assert "INT8 pays off here" in chosen_lines(rows)[-1]
