"""Feature capture on dotted module paths: the right tensors, hooks removed, clear errors."""

import pytest
import torch
from torch import nn

from edgekd.distill.hooks import FeaturePathError, capture, resolve, shapes
from edgekd.distill.loss import feature_key
from edgekd.models import zoo
from edgekd.models.specs import ModelSpec


def student():
    torch.manual_seed(0)
    return zoo.build(
        ModelSpec(
            arch="mobilenetv2", width=0.5, last_channel=32, blocks=[[1, 16, 1, 1], [4, 24, 2, 2]]
        ),
        1,
        10,
    ).eval()


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_captured_features_are_the_modules_outputs_and_inputs():
    model = student()
    x = torch.randn(3, 1, 28, 28)
    keys = ["features.1", feature_key("classifier.1", "input"), "@embedding"]
    with torch.no_grad(), capture(model, keys) as features:
        logits = model(x)
        expected_mid = model.features[:2](x)
        pooled = nn.functional.adaptive_avg_pool2d(model.features(x), 1).flatten(1)
    torch.testing.assert_close(features["features.1"], expected_mid)
    # classifier = (Dropout, Linear): the Linear's input is the pooled embedding.
    torch.testing.assert_close(features["classifier.1:input"], pooled)
    torch.testing.assert_close(features["@embedding"], pooled)
    assert logits.shape == (3, 10)


def test_hooks_are_removed_afterwards_even_after_an_error():
    model = student()
    before = hook_count(model)
    with capture(model, ["features.0", "@embedding"]):
        assert hook_count(model) == before + 2
    assert hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"), capture(model, ["features.1"]):
        raise RuntimeError("boom")
    assert hook_count(model) == before


def test_a_wrong_name_lists_the_valid_ones_and_the_closest():
    with pytest.raises(FeaturePathError) as err:
        resolve(student(), "feature.1")
    message = str(err.value)
    assert "no module 'feature.1'" in message
    assert "did you mean features.1" in message
    assert "features.0.0" in message and "@embedding" in message


def test_shapes_probe_does_not_change_the_training_mode():
    model = student().train()
    found = shapes(model, ["features.1", "@embedding"], torch.zeros(2, 1, 28, 28))
    assert found == {"features.1": (2, 8, 28, 28), "@embedding": (2, 32)}
    assert model.training
