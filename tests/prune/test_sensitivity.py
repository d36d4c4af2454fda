"""Per-layer ratios from measured sensitivity: the greedy spends loss where it buys the most MACs,
the profile keeps only levels that prune more, and the prune stage records what it measured."""

import json

import pytest
import torch

from edgekd import pipeline
from edgekd.models.io import load_model
from edgekd.prune.depgraph import module_macs
from edgekd.prune.sensitivity import Option, allocate, profile


def _table() -> dict[str, list[Option]]:
    return {
        # cheap: 100 MACs for a rise of 0.01, then 100 more for 0.02 more
        "cheap": [Option(0.25, 100, 0.01, 0.1), Option(0.5, 200, 0.03, 0.3)],
        # fragile: 300 MACs, but the loss rises by 1.0
        "fragile": [Option(0.25, 300, 1.0, 9.0)],
        # lumpy: its first level costs more per MAC than its second (0.05/50 vs 0.06/400)
        "lumpy": [Option(0.25, 50, 0.05, 0.5), Option(0.5, 400, 0.06, 0.6)],
        "frozen": [],
    }


def test_the_least_loss_per_mac_goes_first_and_every_group_is_named():
    assert allocate(_table(), 100) == {"cheap": 0.25, "fragile": 0.0, "lumpy": 0.0, "frozen": 0.0}
    # past `cheap`'s first level, jumping `lumpy` straight to 0.5 (0.06/400) beats 0.5 of cheap
    # (0.02/100 more) and the fragile group (1.0/300)
    assert allocate(_table(), 450) == {"cheap": 0.25, "fragile": 0.0, "lumpy": 0.5, "frozen": 0.0}
    assert allocate(_table(), 600)["fragile"] == 0.0  # 200 + 400 without it
    # asked for more than the table holds: everything it has, nothing invented
    assert allocate(_table(), 10_000) == {
        "cheap": 0.5,
        "fragile": 0.25,
        "lumpy": 0.5,
        "frozen": 0.0,
    }
    assert allocate(_table(), 0) == dict.fromkeys(_table(), 0.0)


def test_a_level_that_prunes_no_more_is_left_out_and_rises_are_relative():
    # a fake student: MACs and loss follow the summed ratios; group "b" rounds 0.25 to nothing
    def pruned(ratios):
        return dict(ratios)

    def macs(model):
        return 1000 - int(800 * model["a"]) - (0 if model["b"] < 0.5 else int(400 * model["b"]))

    def score(model):
        return 0.5 + model["a"] + 2 * model["b"], 90.0 - 10 * model["a"]

    table, base = profile(["a", "b"], pruned, score, macs, levels=(0.25, 0.5))
    assert base == {"loss": 0.5, "acc": 90.0, "macs": 1000.0}
    assert [o.ratio for o in table["a"]] == [0.25, 0.5]
    assert table["a"][0] == Option(0.25, 200, 0.25, 2.5)
    assert [o.ratio for o in table["b"]] == [0.5]  # 0.25 saved nothing
    assert table["b"][0].loss_rise == pytest.approx(1.0)


def test_the_stage_profiles_every_layer_and_removes_the_uniform_ratios_macs(write_yaml, tmp_path):
    from tests.prune.test_prune_stage import HEAD, _student

    spec = {"arch": "resnet_small", "widths": [16, 32, 64], "blocks": [1, 1, 1]}

    def run(name: str, allocation: str) -> tuple[dict, int]:
        text = (
            f"name: {name}\n"
            + HEAD
            + _student(spec)
            + f"""
  - stage: prune
    ratio: 0.3
    allocation: {allocation}
    round_to: 4
    bn_recalibration_images: 128
    timing: null
    train: {{epochs: 0.25, lr: 0.01}}
"""
        )
        plan = pipeline.load_plan(write_yaml(text))
        pipeline.run(plan, out=tmp_path / "runs")
        stage = tmp_path / "runs" / name / "02_prune"
        model, _ = load_model(stage / "student")
        macs = sum(module_macs(model, torch.zeros(1, 1, 28, 28)).values())
        return json.loads((stage / "manifest.json").read_text())["metrics"], macs

    (sensitive, macs), (_, uniform_macs) = run("sens", "sensitivity"), run("unif", "uniform")
    record = sensitive["pruning"]
    assert record["allocation"] == "sensitivity" and record["kept"] is True
    table = record["sensitivity"]["table"]
    assert set(table) == set(record["layer_ratios"]) and len(table) >= 3
    for options in table.values():
        saved = [o["saved_macs"] for o in options]
        assert saved == sorted(set(saved)) and all(s > 0 for s in saved)
    chosen = {k for k, v in record["layer_ratios"].items() if v}
    assert chosen and chosen != set(table)  # per-layer: some layers pruned, not all alike
    assert sensitive["params"] < sensitive["params_before"]
    # the uniform ratio's amount, in MACs (within the rounding of channel counts)
    assert uniform_macs * 0.85 <= macs <= uniform_macs * 1.05
