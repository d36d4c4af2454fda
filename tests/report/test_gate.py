"""`edgekd check`: limits pass and fail as they should, with exit codes for CI."""

import json

import pytest

from edgekd.cli import main
from edgekd.errors import EdgeKDError
from edgekd.report.build import SCHEMA_VERSION, summarize
from edgekd.report.gate import Limits, check
from tests.report.test_report import MODELS, ROWS

REPORT = {"schema_version": SCHEMA_VERSION, "summary": summarize(MODELS, ROWS)}


def test_limits_pass_and_fail():
    results = dict((n, ok) for n, ok, _ in check(REPORT, Limits(min_acc=91.0, max_params=99)))
    assert results == {"final test accuracy %": True, "final parameters": False}


def test_baseline_regression():
    slower = json.loads(json.dumps(REPORT))
    slower["summary"]["final"]["best"]["median_ms"] = 0.3
    slower["summary"]["final"]["test_acc"] = 91.0
    results = check(slower, Limits(max_acc_regression=0.4, max_latency_regression=1.2), REPORT)
    assert [(n, ok) for n, ok, _ in results] == [
        ("accuracy regression vs baseline (points)", False),
        ("latency vs baseline (ratio)", False),
    ]


def test_wrong_schema_is_an_error():
    with pytest.raises(EdgeKDError, match="schema_version"):
        check({"schema_version": 99}, Limits(min_acc=1))


def test_cli_exit_codes(tmp_path, capsys):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(REPORT))
    assert main(["check", str(path), "--min-acc", "91", "--max-bytes-ratio", "0.1"]) == 0
    assert main(["check", str(path), "--min-acc", "92"]) == 1
    assert "FAIL  final test accuracy %: 91.5 ≥ 92" in capsys.readouterr().out
    assert main(["check", str(path)]) == 2
