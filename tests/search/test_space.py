"""The search space: its size, its YAML errors, and every candidate's sizes as the built model
has them (the torch-free cost model is what the dry run, the LUT and the roofline use)."""

from __future__ import annotations

import itertools

import pytest
import torch

from edgekd import pipeline
from edgekd.config.schema import Peak
from edgekd.errors import ConfigError
from edgekd.models import zoo
from edgekd.models.specs import ModelSpec
from edgekd.search.cost import blocks, cost
from edgekd.search.dry_run import students
from edgekd.search.predict import roofline_ms
from edgekd.search.space import MobileNetSpace

SMALL = MobileNetSpace(
    width=[0.25, 0.5],
    channels=[8, 16],
    strides=[1, 2],
    depth=[[1], [1, 2]],
    expand=[2, 3],
    kernel=[3, 5],
    last_channel=[32],
)
V3 = MobileNetSpace(  # MobileNetV3's squeeze-and-excitation and hardswish, per stage
    width=[0.5],
    channels=[8, 16, 24],
    strides=[1, 2, 2],
    depth=[[1], [1, 2], [1]],
    expand=[3],
    kernel=[3, 5],
    se=[False, True],
    activation=["relu6", "hardswish"],
    last_channel=[32],
)
BIG = MobileNetSpace(
    width=[0.5, 0.75, 1.0],
    depth=[[1], [1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2]],
    expand=[3, 4, 6],
    kernel=[3, 5],
    last_channel=[96, 128],
)


def test_the_size_counts_every_distinct_student():
    every = [
        SMALL.candidate(dict(zip(SMALL.params(), combo, strict=True)))
        for combo in itertools.product(*SMALL.params().values())
    ]
    assert SMALL.size == len(every) == 2 * (1 * 2) * (2 * 2) * 2  # width, stage 0, stage 1, expand
    assert len({c.key() for c in every}) == len(every)
    assert students(SMALL)[0] == every
    assert BIG.size == 3 * 2 * (3 * 2) ** 3 * (2 * 2) * 3**4 * 2


@pytest.mark.parametrize(
    "candidate", [*students(SMALL)[0][:6], *BIG.sample(4, seed=3), *V3.sample(6, seed=1)]
)
def test_each_candidate_builds_with_the_sizes_the_cost_model_computes(candidate):
    model = zoo.build(ModelSpec.model_validate(candidate.model()), 1, 10)
    example = torch.zeros(1, 1, candidate.resolution, candidate.resolution)
    assert model(example).shape == (1, 10)
    size = cost(candidate, 1, 10)
    assert size.params == zoo.count_params(model)
    assert size.macs == zoo.count_macs(model, example)
    kernels = {m.kernel_size[0] for m in model.modules() if getattr(m, "groups", 1) > 1}
    assert kernels == set(candidate.kernels)
    blocks_ = model.features[1:-1]
    per_block = [v for v, n in zip(candidate.v3(), candidate.depths, strict=True) for _ in range(n)]
    for block, (se, activation) in zip(blocks_, per_block, strict=True):
        kinds = {type(m).__name__ for m in block.modules()}
        assert ("SqueezeExcitation" in kinds) == se
        assert ("Hardswish" in kinds) == (activation == "hardswish")
        assert ("ReLU6" in kinds) == (activation == "relu6")


def test_a_student_of_another_resolution_resizes_its_input_inside_the_network():
    space = MobileNetSpace(width=[0.5], resolution=[20, 28]).at(28)
    low, native = (
        space.candidate({**{k: v[0] for k, v in space.params().items()}, "resolution": r})
        for r in (20, 28)
    )
    assert low.model()["input_size"] == 20 and "input_size" not in native.model()
    model = zoo.build(ModelSpec.model_validate(low.model()), 1, 10)
    data_sized = torch.zeros(1, 1, 28, 28)  # the data's resolution goes in
    assert model(data_sized).shape == (1, 10)
    assert zoo.count_macs(model, data_sized) == cost(low, 1, 10).macs  # convs run at 20 px
    assert cost(low, 1, 10).macs < cost(native, 1, 10).macs


def test_a_latency_table_cannot_search_the_resolution(write_yaml):
    text = SEARCH.format(space="      resolution: [20, 28]").replace(
        "latency_budget_ms: 1.0", "latency_budget_ms: 1.0\n    predictor: lut\n    lut: x.json"
    )
    with pytest.raises(ConfigError, match=r"stages\[1\].space.resolution: a latency table"):
        pipeline.load_plan(write_yaml(text))


def test_mobilenetv3_settings_of_the_imagenet_rows_need_seven_entries():
    from edgekd.models.specs import MobileNetV2Config

    assert MobileNetV2Config(se=[False] * 6 + [True]).se[-1]
    with pytest.raises(ValueError, match=r"one entry per row of blocks \(7\)"):
        MobileNetV2Config(se=[True])


def test_mobilenetv3_choices_are_per_stage_settings_and_plain_students_keep_their_model():
    assert V3.size == 2**3 * 2 * 4**3  # kernel per stage, stage 1 depth, se × activation per stage
    assert "se" not in next(SMALL.sample(1)).model()  # keys of plain students do not change
    one = V3.candidate({k: v[-1] for k, v in V3.params().items()})
    assert one.model()["se"] == [True] * 3 and one.model()["activation"] == ["hardswish"] * 3
    assert "1×t1k5sehs" in one.describe()


def test_the_flagship_student_is_in_the_default_space_with_its_size():
    flagship = MobileNetSpace(depth=[[1], [2], [2], [2], [1]])
    (only,) = students(flagship)[0]
    assert only.blocks() == [[1, 16, 1, 1, 3], [4, 24, 2, 2, 3], [4, 32, 2, 2, 3],
                             [4, 64, 2, 2, 3], [4, 96, 1, 1, 3]]  # fmt: skip
    assert cost(only, 1, 10).params == 135_818  # the README's FP32 student


def test_the_roofline_sums_each_layer_at_its_bound():
    peak = Peak(int8_tops=1.0, mem_gbps=1.0)  # 1e12 ops/s, 1e9 bytes/s
    (one,) = students(MobileNetSpace(channels=[8], strides=[1], depth=[[1]], last_channel=[16]))[0]
    expected = 0.0
    for block in blocks(one, 1, 10):
        for layer in block.layers:
            expected += max(2 * layer.macs / 1e12, layer.bytes(1, 1) / 1e9)
    assert roofline_ms(one, peak, "int8", (1, 10)) == pytest.approx(expected * 1e3)
    # the stem at 28 px moves 1·28² + 32·28² int8 values plus its 288 + 64 parameters
    stem = blocks(one, 1, 10)[0].layers[0]
    assert stem.bytes(1, 1) == 28 * 28 * (1 + 32) + 9 * 32 + 2 * 32
    with pytest.raises(Exception, match="mem_gbps"):
        roofline_ms(one, Peak(int8_tops=1.0), "int8", (1, 10))


SEARCH = """name: s
device: cpu
data: {{dataset: fashion-mnist, train_subset: 200, val_size: 100, test_subset: 100}}
stages:
  - {{stage: teacher, model: {{arch: tiny_cnn}}}}
  - stage: search
    target: targets/cpu-x86.yaml
    latency_budget_ms: 1.0
    space:
{space}
  - {{stage: student}}
"""


@pytest.mark.parametrize(
    ("space", "key", "message"),
    [
        ("      depth: [[1], [1, 2]]", "space", "one entry per stage"),
        ("      width: [0.5, 0.5]", "space", "lists a value twice"),
        ("      width: []", "space.width", "at least 1 item"),
        ("      kernel: [3, 4]", "space", "must be odd"),
        ("      resolution: [4]", "space", "smaller than the network's total stride 8"),
        ("      widht: [1.0]", "space.widht", "did you mean"),
    ],
)
def test_a_bad_space_fails_validation_with_its_line(write_yaml, space, key, message):
    path = write_yaml(SEARCH.format(space=space))
    with pytest.raises(ConfigError, match=message) as info:
        pipeline.load_plan(path)
    assert f"{path}:" in str(info.value) and f"stages[1].{key}" in str(info.value)


def test_a_search_needs_a_target_profile_that_exists(write_yaml):
    path = write_yaml(SEARCH.format(space="      width: [1.0]").replace("cpu-x86", "nope"))
    with pytest.raises(ConfigError, match=r"stages\[1\].target: target profile"):
        pipeline.load_plan(path)


def test_the_roofline_predictor_needs_the_profiles_peak_figures(write_yaml):
    text = SEARCH.format(space="      width: [1.0]").replace(
        "latency_budget_ms: 1.0", "latency_budget_ms: 1.0\n    predictor: roofline"
    )
    with pytest.raises(ConfigError, match=r"stages\[1\].predictor: the roofline needs"):
        pipeline.load_plan(write_yaml(text))
