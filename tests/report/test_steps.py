"""The steps section's readers: the ladder's rungs and notes, pruning lines, and the warnings a
person must see before shipping (float layers, a missed budget, pruning that did not pay)."""

from edgekd.report import steps

LADDER = {
    "stage": "qat",
    "budget_points": 0.5,
    "rungs": [
        {"rung": "fp32", "val_acc": 92.0, "test_acc": 91.5},
        {
            "rung": "ptq",
            "val_acc": 88.0,
            "drop": 4.0,
            "test_acc": 87.6,
            "latency": {"median_ms": 0.1, "noise_pct": 2.0},
        },
        {
            "rung": "fallback",
            "val_acc": 91.2,
            "drop": 0.8,
            "test_acc": 90.9,
            "latency": {"median_ms": 0.112, "noise_pct": 3.0},
            "float_layers": ["features.1.conv.0.0"],
        },
        {
            "rung": "qat",
            "val_acc": 91.7,
            "drop": 0.3,
            "test_acc": 91.4,
            "latency": {"median_ms": 0.112, "noise_pct": 3.0, "same_graph_as": "fallback"},
        },
    ],
    "float_layers": ["features.1.conv.0.0"],
    "float_cost_ms": 0.012,
    "fallback": {"met": False, "steps": []},
    "qat": {"run": True, "why": "drop 0.80 points is still over the budget of 0.5"},
}
REJECTED = {
    "stage": "prune",
    "ratio": 0.25,
    "allocation": "uniform",
    "importance": "group_norm",
    "timed_as": "int8",
    "kept": False,
    "why": "0.0760 → 0.0750 ms (+1.3 %, noise ±4.0 %, onnxruntime on cpu-x86, 3 rounds): "
    "not measurably faster, not kept",
}


def test_rungs_and_notes_say_what_each_rung_did():
    rows = steps.rung_rows(LADDER)
    assert [r["rung"] for r in rows] == ["fp32", "ptq", "fallback", "qat"]
    assert rows[1]["drop"] == "+4.00" and rows[0]["latency"] == "–"
    assert rows[3]["latency"] == "0.1120 ± 3.0 % (graph of fallback)"
    notes = steps.ladder_notes(LADDER)
    assert "left in float: features.1.conv.0.0 (cost +12.0 µs against all-INT8 PTQ)" in notes
    assert notes[-1].startswith("KD-QAT ran: drop 0.80")


def test_warnings_name_float_layers_and_pruning_that_did_not_pay():
    taken = {"ladder": LADDER, "pruning": [REJECTED]}
    out = steps.warnings(taken)
    assert any("layers left in float: features.1.conv.0.0" in w for w in out)
    assert any("pruning did not pay" in w and "0.0760 → 0.0750 ms" in w for w in out)
    assert not any("over the budget" in w for w in out)  # QAT brought it within 0.5
    missed = {**LADDER, "rungs": LADDER["rungs"][:3]}  # stopped after the fallback
    assert any("over the budget of 0.5" in w for w in steps.warnings({"ladder": missed}))


def test_markdown_has_a_row_per_rung_and_a_line_per_pruning_step():
    lines = steps.markdown({"ladder": LADDER, "pruning": [REJECTED]})
    assert "| fallback | 91.20 | +0.80 | 90.90 | 0.1120 ± 3.0 % |" in lines
    assert any(line.startswith("- prune: 25 % of channels (uniform allocation") for line in lines)
    assert steps.markdown(None) == [] and steps.markdown({"ladder": None, "pruning": []}) == []


def test_a_sensitivity_step_says_it_matched_macs_and_names_each_layers_share():
    step = REJECTED | {
        "allocation": "sensitivity",
        "kept": True,
        "why": "0.0772 → 0.0652 ms (+15.5 %, noise ±1.2 %): faster, kept",
        "layer_ratios": {"features.2.conv.1.0": 0.75, "features.9.0": 0.0, "features.4": 0.5},
    }
    line = steps.pruning_line(step)
    assert line.startswith("prune: the MACs of 25 % of channels (sensitivity allocation")
    assert line.endswith("; per layer: features.2.conv.1.0 75 %, features.4 50 %")
