"""`edgekd check`: limits pass and fail as they should, latency against a baseline is compared
as a ratio to the teacher measured in the same run (noise-aware), with exit codes, a Markdown
summary and JUnit XML for CI; `edgekd baseline update` writes a baseline on purpose."""

import copy
import json
import xml.etree.ElementTree as ET

import pytest

from edgekd.cli import main
from edgekd.errors import EdgeKDError
from edgekd.report.build import SCHEMA_VERSION, summarize
from edgekd.report.gate import BASELINE_DEFAULTS, Limits, check
from tests.report.test_report import MODELS, ROWS

REPORT = {
    "schema_version": SCHEMA_VERSION,
    "pipeline": {"name": "p", "file": "p.yaml", "yaml": "name: p\n"},
    "summary": summarize(MODELS, ROWS),
    "latency": ROWS,
    "models": MODELS,
}


def scaled(report, final=1.0, teacher=1.0, ci=0.0):
    """`report` with the final model's and the teacher's rows times `final` and `teacher`, and
    every row's 95 % interval `ci` of its median."""
    out = copy.deepcopy(report)
    for row in out["latency"]:
        if row["status"] == "ok":
            factor = final if row["model"] == "final" else teacher
            for key in ("median_ms", "p90_ms", "p99_ms", "mean_ms"):
                row[key] *= factor
            row["ci95_ms"] = ci * row["median_ms"]
    out["summary"] = summarize(out["models"], out["latency"])
    return out


def outcome(results):
    return [(r.name, r.passed) for r in results]


def test_limits_pass_and_fail():
    results = check(REPORT, Limits(min_acc=91.0, max_params=99, min_parity_top1=99.0))
    assert outcome(results) == [
        ("final test accuracy %", True),
        ("final parameters", False),
        ("final ONNX vs PyTorch top-1 agreement %", True),
    ]


def test_a_machine_slower_overall_passes_and_a_student_alone_slower_fails():
    limits = Limits(max_latency_regression=10.0)
    slower_machine = scaled(REPORT, final=1.3, teacher=1.3)
    assert outcome(check(slower_machine, limits, REPORT)) == [
        ("latency vs baseline on cpu-x86", True)
    ]
    slower_student = scaled(REPORT, final=1.15)
    (result,) = check(slower_student, limits, REPORT)
    assert not result.passed and "0.200 → 0.230 (+15.0 % ± 0.0 %" in result.detail
    # the same 15 % inside rows measured with ±5 % each: within the noise, not a regression
    assert check(scaled(REPORT, final=1.15, ci=0.05), limits, scaled(REPORT, ci=0.05))[0].passed


def rounds(report, final, teacher):
    """`report` with every row of the final model timed in rounds `final` (times its median)
    and every teacher row in rounds `teacher`: interleaved rounds, the same minute for both."""
    out = copy.deepcopy(report)
    for row in out["latency"]:
        if row["status"] == "ok":
            factors = final if row["model"] == "final" else teacher
            row["round_medians_ms"] = [row["median_ms"] * f for f in factors]
            row["median_ms"] = sorted(row["round_medians_ms"])[len(factors) // 2]
            row["ci95_ms"] = 0.3 * row["median_ms"]  # a busy machine's tail: ignored when paired
    out["summary"] = summarize(out["models"], out["latency"])
    return out


def test_rounds_are_paired_so_one_busy_minute_does_not_hide_a_regression():
    limits = Limits(max_latency_regression=10.0)
    base = rounds(REPORT, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    # the second round ran while the machine was 60 % slower: both models in it
    busy = rounds(REPORT, [1.0, 1.6, 1.0], [1.0, 1.6, 1.0])
    assert check(busy, limits, base)[0].passed
    # the student alone 15 % slower, through the same busy round: paired, it shows
    (result,) = check(rounds(REPORT, [1.15, 1.84, 1.15], [1.0, 1.6, 1.0]), limits, base)
    assert not result.passed and "+15.0 % ± 0.0 %" in result.detail
    # unpaired (no rounds), the rows' 30 % intervals of the mean would have hidden it
    assert check(scaled(REPORT, final=1.15, ci=0.3), limits, scaled(REPORT, ci=0.3))[0].passed


def test_accuracy_and_size_against_a_baseline():
    worse = copy.deepcopy(REPORT)
    worse["summary"]["final"]["test_acc"] = 90.9
    worse["summary"]["final"]["bytes"] = 440
    limits, filled = Limits().with_defaults()
    assert filled == sorted(BASELINE_DEFAULTS)
    assert outcome(check(worse, limits, REPORT)) == [
        ("accuracy regression vs baseline (points)", False),  # 0.6 > 0.5
        ("final size growth vs baseline %", False),  # 10 % > 5 %
        ("latency vs baseline on cpu-x86", True),
    ]


def test_wrong_schema_is_an_error():
    with pytest.raises(EdgeKDError, match="schema_version"):
        check({"schema_version": 99}, Limits(min_acc=1))


def test_cli_exit_codes_markdown_and_junit(tmp_path, capsys):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(REPORT))
    assert main(["check", str(path), "--min-acc", "91", "--max-bytes-ratio", "0.1"]) == 0
    assert main(["check", str(path), "--min-acc", "92"]) == 1
    assert "FAIL  final test accuracy %: 91.5 ≥ 92" in capsys.readouterr().out
    assert main(["check", str(path)]) == 2  # no limit at all: a usage error
    assert main(["check", str(tmp_path / "missing.json"), "--min-acc", "1"]) == 2
    # a baseline alone is a complete gate: the defaults apply and are printed
    base = tmp_path / "base.json"
    base.write_text(json.dumps(REPORT))
    slower = tmp_path / "slower.json"
    slower.write_text(json.dumps(scaled(REPORT, final=1.2)))
    md, xml = tmp_path / "gate.md", tmp_path / "gate.xml"
    code = main(["check", str(slower), "--baseline", str(base), "--markdown", str(md),
                 "--junit", str(xml)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "defaults applied (no tolerance given): max_acc_regression 0.5, " in out
    assert md.read_text().startswith("### edgekd check: p: **1 of 3 limits failed**")
    suite = ET.parse(xml).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    (failed,) = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed.get("name") == "latency vs baseline on cpu-x86"


def test_the_pipelines_gate_section_sets_limits_and_flags_override_it(tmp_path, capsys):
    report = copy.deepcopy(REPORT)
    report["pipeline"]["yaml"] = "name: p\ngate: {min_acc: 92.0}\n"
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert main(["check", str(path)]) == 1
    assert main(["check", str(path), "--min-acc", "91"]) == 0
    report["pipeline"]["yaml"] = "name: p\ngate: {min_acc: high}\n"
    path.write_text(json.dumps(report))
    assert main(["check", str(path)]) == 2
    assert "the pipeline's `gate:` section is not valid" in capsys.readouterr().err


def test_baseline_update_writes_the_report_on_purpose(tmp_path, capsys):
    run = tmp_path / "runs" / "p"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps(REPORT))
    target = tmp_path / "baselines" / "p.json"
    assert main(["baseline", "update", str(run), "--to", str(target)]) == 0
    assert json.loads(target.read_text()) == REPORT
    (run / "report.json").write_text(json.dumps(scaled(REPORT, final=1.2)))
    assert main(["baseline", "update", str(run), "--to", str(target)]) == 0
    assert "replacing" in capsys.readouterr().out
    assert json.loads(target.read_text())["latency"][2]["median_ms"] == pytest.approx(0.96)
