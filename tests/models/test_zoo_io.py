"""Every registered model builds; model folders round-trip; unsafe files are refused."""

import os

import pytest
import torch

from edgekd.errors import WeightsError
from edgekd.models import zoo
from edgekd.models.io import load_model, read_weights, resize_to_state_dict, save_model
from edgekd.models.specs import MODEL_CONFIGS, ModelSpec

TINY = {
    "resnet_small": {"widths": [4, 8], "blocks": [1, 1]},
    "resnet18": {},
    "resnet34": {},
    "resnet50": {},
    "mobilenetv2": {"width": 0.25, "last_channel": 32, "blocks": [[1, 8, 1, 1], [2, 8, 2, 2]]},
    "tiny_cnn": {},
    "torchvision": {"name": "mobilenet_v3_small"},
    "timm": {"name": "resnet10t"},
}


@pytest.mark.parametrize("arch", MODEL_CONFIGS.names())
def test_every_registered_model_builds_and_runs(arch):
    model = zoo.build(ModelSpec(arch=arch, **TINY[arch]), 1, 7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_mobilenet_head_is_configurable():
    spec = ModelSpec(arch="mobilenetv2", width=0.5, last_channel=64)
    model = zoo.build(spec, 1, 10)
    assert model.classifier[-1].in_features == 64
    assert model.features[0][0].in_channels == 1 and model.features[0][0].stride == (1, 1)


def test_count_macs_of_a_single_conv():
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3)
    )
    assert zoo.count_macs(conv, torch.zeros(1, 2, 5, 5)) == 4 * 5 * 5 * 2 * 9 + 100 * 3


def test_save_load_round_trip(tmp_path):
    spec = ModelSpec(arch="tiny_cnn")
    model = zoo.build(spec, 1, 10).eval()
    save_model(
        model, tmp_path / "m", {"spec": spec.model_dump(), "in_channels": 1, "num_classes": 10}
    )
    loaded, meta = load_model(tmp_path / "m")
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), model(x))
    assert meta["num_classes"] == 10


def test_resize_to_pruned_state():
    spec = ModelSpec(arch="mobilenetv2", **TINY["mobilenetv2"])
    big = zoo.build(spec, 1, 10)
    small = zoo.build(spec.model_copy(update={}), 1, 10)
    state = {k: v[:4] if v.ndim and v.shape[0] == 8 else v for k, v in big.state_dict().items()}
    resize_to_state_dict(small, state)
    for k, v in small.state_dict().items():
        assert v.shape == state[k].shape, k


def test_corrupt_safetensors_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        read_weights(path)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"weight": Evil()}, path)
    with pytest.raises(WeightsError, match="weights_only=True"):
        read_weights(path)
    assert not marker.exists()


def test_state_dict_of_another_architecture_names_the_mismatch(tmp_path):
    from edgekd.models.io import load_state

    model = zoo.build(ModelSpec(arch="tiny_cnn"), 1, 10)
    other = zoo.build(ModelSpec(arch="tiny_cnn", widths=[8, 32]), 1, 10)
    with pytest.raises(WeightsError, match="wrong shape"):
        load_state(model, other.state_dict(), "x.safetensors")


def test_wrapped_state_dict_is_accepted(tmp_path):
    model = zoo.build(ModelSpec(arch="tiny_cnn"), 1, 10)
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, tmp_path / "c.pt")
    state = read_weights(tmp_path / "c.pt")
    assert set(state) == set(model.state_dict())
