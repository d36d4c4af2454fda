"""The lookup-table predictor: which blocks a space has, modules that compute exactly those
blocks, sums against hand-computed values, and a table that refuses another device."""

from __future__ import annotations

import json

import pytest
import torch

from edgekd import pipeline
from edgekd.cli import main
from edgekd.errors import EdgeKDError
from edgekd.models import zoo
from edgekd.runners.base import cpu_name
from edgekd.search import lut
from edgekd.search.cost import blocks
from edgekd.search.dry_run import students
from edgekd.search.predict import SearchError
from tests.search.test_search_stage import search_yaml, trials_of
from tests.search.test_space import SMALL, V3
from tests.test_pipeline import run_quietly


def test_the_unique_blocks_cover_every_student_of_the_space():
    found = lut.unique_blocks(SMALL, (1, 10))
    every = {b.key() for c in students(SMALL)[0] for b in blocks(c, 1, 10)}
    assert every == set(found)
    # at most per width: stem, head, stage 0 (t 1, 2 kernels), stage 1 first and repeated
    # (2 t × 2 k); fewer, since both widths round stage 0 to 8 channels (torchvision's rule)
    assert len(found) == 15 < 2 * (1 + 1 + 2 + 2 * 2 * 2)
    v3 = lut.unique_blocks(V3, (1, 10))
    assert {b.key() for c in students(V3)[0] for b in blocks(c, 1, 10)} == set(v3)


@pytest.mark.parametrize("block", list(lut.unique_blocks(V3, (1, 10)).values())[::5])
def test_each_mobilenetv3_block_module_computes_that_block(block):
    test_each_block_module_computes_that_block(block)


@pytest.mark.parametrize("block", list(lut.unique_blocks(SMALL, (1, 10)).values())[:8])
def test_each_block_module_computes_that_block(block):
    module = lut.block_module(block).eval()
    first, last = block.layers[0], block.layers[-1]
    out = module(torch.zeros(1, first.cin, first.size_in, first.size_in))
    expected = (
        (1, last.cout) if block.name == "head" else (1, last.cout, last.size_out, last.size_out)
    )
    assert tuple(out.shape) == expected
    assert zoo.count_params(module) == sum(x.params for x in block.layers)


def test_the_table_sums_its_blocks_plus_the_overhead():
    candidate = students(SMALL)[0][5]
    keys = [b.key() for b in blocks(candidate, 1, 10)]
    table = lut.Table(
        fingerprint={},
        target="t",
        blocks={k: 0.01 * (i + 1) for i, k in enumerate(keys)},
        overhead_ms=0.005,
        references=[],
    )
    expected = 0.005 + sum(0.01 * (i + 1) for i in range(len(keys)))
    assert table.predict(candidate, (1, 10)) == pytest.approx(expected)
    table.per_block_ms = 0.002  # what timing each block alone added
    assert table.predict(candidate, (1, 10)) == pytest.approx(expected - 0.002 * len(keys))
    del table.blocks[keys[1]]
    with pytest.raises(SearchError, match=r"blocks block0.0 are not in the latency table"):
        table.predict(candidate, (1, 10))


def test_the_overheads_are_fitted_from_the_reference_students():
    # whole = 0.03 + Σ blocks − 0.004 · blocks, exactly, for students of 4, 6 and 9 blocks
    counts = [4, 6, 9, 6]
    gaps = [0.03 - 0.004 * n for n in counts]
    overhead, per_block = lut.fit_overheads(gaps, counts)
    assert overhead == pytest.approx(0.03) and per_block == pytest.approx(0.004)
    assert lut.fit_overheads([0.01, 0.03], [5, 5]) == (pytest.approx(0.02), 0.0)
    # references that say a lone block is faster than in the model: no per-block cost
    assert lut.fit_overheads([0.01, 0.05, 0.09], [4, 6, 8]) == (pytest.approx(0.05), 0.0)


def test_a_profile_serves_its_own_device_and_refuses_another(tmp_path):
    path = search_yaml(tmp_path, "l", trials=2)
    table_file = tmp_path / "cpu.json"
    text = (
        path.read_text()
        .replace("width: [0.25, 0.5]", "width: [0.5]")
        .replace("kernel: [3, 5]", "kernel: [3]")
    )
    path.write_text(
        text.replace("    trials: 2", f"    trials: 2\n    predictor: lut\n    lut: {table_file}")
    )
    with pytest.raises(EdgeKDError, match=r"latency table .* build it on the target with"):
        run_quietly(pipeline.load_plan(path), tmp_path / "runs")
    assert main(["profile", str(path), "--workdir", str(tmp_path / "w")]) == 0
    table = json.loads(table_file.read_text())
    assert len(table["blocks"]) == 5  # stem, stage 0, stage 1 first and repeated, head
    assert table["fingerprint"]["machine"] == cpu_name()
    assert table["fingerprint"]["runtime"] == "onnxruntime"
    assert len(table["references"]) == lut.REFERENCES

    out = tmp_path / "runs"
    run_quietly(pipeline.load_plan(path), out)
    assert {t["latency_source"] for t in trials_of(out / "l")} == {"predicted (latency table)"}

    table["fingerprint"]["versions"] = {"onnxruntime": "0.0.1"}
    table_file.write_text(json.dumps(table))
    with pytest.raises(EdgeKDError, match=r"measured on another device or runtime \(versions"):
        run_quietly(pipeline.load_plan(path), out)
