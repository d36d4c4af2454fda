"""Any torchvision classifier by name: the names edgekd checks without torch are torchvision's,
and models of several families build for other channel counts, hook, export and prune."""

from __future__ import annotations

import pytest
import torch

from edgekd.models import zoo
from edgekd.models.specs import TORCHVISION_CLASSIFIERS, ModelSpec

FAMILIES = ["mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "shufflenet_v2_x0_5"]


def test_the_names_validate_knows_are_torchvisions_own():
    import torchvision

    live = torchvision.models.list_models(module=torchvision.models)
    assert sorted(TORCHVISION_CLASSIFIERS) == sorted(live)


def test_an_unknown_name_fails_at_validate_with_a_suggestion(write_yaml, capsys):
    from edgekd.cli import main

    path = write_yaml(
        "name: x\nstages:\n  - stage: teacher\n"
        "    model: {arch: torchvision, name: efficientnet_b9}\n"
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4:" in err and "no classification model 'efficientnet_b9'" in err
    assert 'did you mean "efficientnet_b' in err


@pytest.mark.parametrize("name", FAMILIES)
def test_a_torchvision_model_builds_for_one_channel_hooks_and_exports(name, tmp_path):
    from edgekd.distill.hooks import capture, module_names
    from edgekd.export.onnx import export_onnx, onnx_logits, torch_logits

    torch.manual_seed(0)
    model = zoo.build(ModelSpec(arch="torchvision", name=name), 1, 10).eval()
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


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "regnet_y_400mf"])
def test_a_torchvision_model_prunes_with_depgraph(name):
    from edgekd.prune.depgraph import prune_channels

    torch.manual_seed(0)
    model = zoo.build(ModelSpec(arch="torchvision", name=name), 3, 10).eval()
    before = zoo.count_params(model)
    prune_channels(model, torch.zeros(1, 3, 64, 64), 0.25, 8, 10)
    assert zoo.count_params(model) < 0.85 * before
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
