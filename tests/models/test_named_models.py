"""Any torchvision classifier or timm model by name: the names edgekd checks without torch are
the libraries' own, and models of several families of each build for other channel counts, hook,
export and prune."""

from __future__ import annotations

import pytest
import torch

from edgekd.models import zoo
from edgekd.models.specs import TORCHVISION_CLASSIFIERS, ModelSpec, timm_names

FAMILIES = [
    ("torchvision", "mobilenet_v3_small"),
    ("torchvision", "efficientnet_b0"),
    ("torchvision", "regnet_y_400mf"),
    ("torchvision", "shufflenet_v2_x0_5"),
    ("timm", "resnet10t"),
    ("timm", "mobilenetv3_small_050"),
    ("timm", "efficientnet_lite0"),
]


def test_the_names_validate_knows_are_torchvisions_own():
    import torchvision

    live = torchvision.models.list_models(module=torchvision.models)
    assert sorted(TORCHVISION_CLASSIFIERS) == sorted(live)


def test_the_timm_names_validate_knows_are_timms_own():
    import timm

    assert timm_names() == frozenset(timm.list_models())


@pytest.mark.parametrize(
    ("arch", "name", "message", "suggestion"),
    [
        (
            "torchvision",
            "efficientnet_b9",
            "no classification model 'efficientnet_b9'",
            "efficientnet_b",
        ),
        ("timm", "resnet10x", "timm has no model 'resnet10x'", "resnet10t"),
    ],
)
def test_an_unknown_name_fails_at_validate_with_a_suggestion(
    write_yaml, capsys, arch, name, message, suggestion
):
    from edgekd.cli import main

    path = write_yaml(
        f"name: x\nstages:\n  - stage: teacher\n    model: {{arch: {arch}, name: {name}}}\n"
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4:" in err and message in err
    assert f'did you mean "{suggestion}' in err


@pytest.mark.parametrize(("arch", "name"), FAMILIES)
def test_a_named_model_builds_for_one_channel_hooks_and_exports(arch, name, tmp_path):
    from edgekd.distill.hooks import capture, module_names
    from edgekd.export.onnx import export_onnx, onnx_logits, torch_logits

    torch.manual_seed(0)
    model = zoo.build(ModelSpec(arch=arch, name=name), 1, 10).eval()
    images = torch.randn(4, 1, 64, 64)
    assert model(images).shape == (4, 10)
    middle = [n for n in module_names(model) if n.startswith("features.") and n.count(".") == 1]
    key = middle[len(middle) // 2] if middle else module_names(model)[len(module_names(model)) // 2]
    with capture(model, [key]) as features:
        model(images)
    assert features[key].shape[0] == 4
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, images[:1], path)
    torch.testing.assert_close(
        torch.from_numpy(onnx_logits(path, images)),
        torch.from_numpy(torch_logits(model, images)),
        atol=1e-4,
        rtol=1e-4,
    )


@pytest.mark.parametrize(
    ("arch", "name"),
    [
        ("torchvision", "mobilenet_v3_small"),
        ("torchvision", "regnet_y_400mf"),
        ("torchvision", "convnext_tiny"),  # LayerNorm and a per-channel layer scale to resize
        ("timm", "resnet10t"),
    ],
)
def test_a_named_model_prunes_with_depgraph_and_reloads(arch, name):
    """DepGraph prunes it, and its pruned weights load into a fresh build (as the stages after
    prune load them) and compute the same."""
    from edgekd.models.io import load_state, resize_to_state_dict
    from edgekd.prune.depgraph import prune_channels

    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, name=name)
    model = zoo.build(spec, 3, 10).eval()
    before = zoo.count_params(model)
    prune_channels(model, torch.zeros(1, 3, 64, 64), 0.25, 8, 10)
    assert zoo.count_params(model) < 0.85 * before
    images = torch.randn(2, 3, 64, 64)
    again = zoo.build(spec, 3, 10).eval()
    resize_to_state_dict(again, model.state_dict())
    load_state(again, model.state_dict(), name)
    with torch.no_grad():
        assert model(images).shape == (2, 10)
        torch.testing.assert_close(again(images), model(images))


@pytest.mark.parametrize(
    ("arch", "name"), [("torchvision", "mobilenet_v3_small"), ("timm", "resnet10t")]
)
def test_a_named_model_quantizes_trains_and_exports_as_qdq(arch, name, tmp_path):
    """NNCF QAT on a named model as the qat stage runs it: PTQ, a training step on the fake-
    quantized model, its quantizers restored from their JSON config into a fresh build (how a
    later stage loads it), and a Q/DQ ONNX file that computes what the model computes."""
    import onnx

    from edgekd.export.onnx import export_onnx, onnx_logits
    from edgekd.quant import nncf_qat

    cpu = torch.device("cpu")
    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, name=name)
    images, labels = torch.randn(16, 3, 64, 64), torch.randint(0, 10, (16,))
    quantized = nncf_qat.quantize_inputs(zoo.build(spec, 3, 10).eval(), [images], cpu)
    assert nncf_qat.is_quantized(quantized)
    quantized.train()
    opt = torch.optim.SGD(quantized.parameters(), lr=0.01)
    loss = torch.nn.functional.cross_entropy(quantized(images), labels)
    loss.backward()
    opt.step()
    quantized.eval()
    restored = nncf_qat.restore(zoo.build(spec, 3, 10).eval(), nncf_qat.config(quantized))
    restored.load_state_dict(quantized.state_dict())
    with torch.no_grad():
        expected = quantized(images)
        torch.testing.assert_close(restored(images), expected)
    path = tmp_path / "int8.onnx"
    export_onnx(nncf_qat.strip(quantized, images[:1]), images[:1], path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    got = torch.from_numpy(onnx_logits(path, images))
    # fake quantization in torch vs real INT8 rounding in onnxruntime: a step or so apart
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.9
    torch.testing.assert_close(got, expected, atol=0.1 * float(expected.abs().max()), rtol=0)


@pytest.mark.parametrize("stage", ["qat", "prune"])
def test_a_student_a_stage_cannot_handle_stops_at_validate(write_yaml, monkeypatch, stage):
    """The refusal table (filled from docs/benchmarks/named_models.md) stops the pipeline at
    the student's `model:` line, naming the stage and the reason; other stages still pass."""
    from edgekd.errors import ConfigError
    from edgekd.models import specs
    from edgekd.pipeline import load_plan

    other = "prune" if stage == "qat" else "qat"
    monkeypatch.setitem(
        specs.KNOWN_FAILURES, ("torchvision", "mobilenet_v3_small"), {stage: "REASON"}
    )
    text = (
        "name: t\ndata: {train_subset: 100}\nstages:\n"
        "  - stage: teacher\n    model: {arch: tiny_cnn}\n"
        "  - stage: student\n    model: {arch: torchvision, name: mobilenet_v3_small}\n"
    )
    load_plan(write_yaml(text + f"  - stage: {other}\n"))
    with pytest.raises(ConfigError) as exc:
        load_plan(write_yaml(text + f"  - stage: {stage}\n"))
    message = str(exc.value)
    assert ":7: stages[1].model: " in message
    assert f"the {stage} stage (stage 2) cannot handle {{arch: torchvision, name: " in message
    assert "REASON" in message


def test_the_refusal_table_names_measured_failures_only():
    """Every entry is a model of the benchmark's list and a stage it failed there."""
    import re

    from edgekd.models.specs import KNOWN_FAILURES
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "benchmarks" / "named_models.md").read_text()
    failed = set(re.findall(r"^- (\w+) `([\w.]+)`, (\w+):", doc, flags=re.M))
    listed = {
        (arch, name, stage) for (arch, name), stages in KNOWN_FAILURES.items() for stage in stages
    }
    assert listed and listed <= failed
