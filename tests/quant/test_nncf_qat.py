"""Real NNCF: quantize, save/restore, export Q/DQ ONNX that onnxruntime runs like PyTorch."""

import json

import onnx
import pytest
import torch

from edgekd.config.schema import AugmentConfig, TrainConfig
from edgekd.data.datasets import model_to_device, normalize, sample
from edgekd.distill.distiller import Distiller
from edgekd.distill.losses.ce import CEConfig
from edgekd.distill.trainer import evaluate, fit
from edgekd.export.onnx import export_onnx, onnx_logits, parity, store_int8_weights
from edgekd.models import zoo
from edgekd.models.io import load_model, save_model
from edgekd.models.specs import ModelSpec
from edgekd.quant import nncf_qat
from tests.conftest import TOL

CPU = torch.device("cpu")
SPEC = ModelSpec(
    arch="mobilenetv2",
    width=0.5,
    last_channel=64,
    blocks=[[1, 16, 1, 1], [4, 24, 2, 2], [4, 32, 2, 2]],
)


@pytest.fixture(scope="module")
def trained(splits):
    torch.manual_seed(0)
    model = zoo.build(SPEC, 1, 10)
    fit(
        model,
        splits.train,
        splits,
        TrainConfig(epochs=2, lr=0.1, batch_size=64),
        Distiller([("ce", 1.0, CEConfig())]),
        teacher=None,
        augment=AugmentConfig(),
        device=CPU,
        seed=0,
    )
    return model.eval()


@pytest.fixture(scope="module")
def quantized(trained, splits):
    return nncf_qat.quantize(trained, sample(splits.train, 256, 0), splits, 64, CPU)


def test_quantization_inserts_quantizers_and_keeps_accuracy(trained, quantized, splits):
    assert nncf_qat.is_quantized(quantized) and not nncf_qat.is_quantized(trained)
    fp32 = evaluate(trained, splits.test, splits, CPU)
    int8 = evaluate(quantized, splits.test, splits, CPU)
    assert fp32 > 60  # the fixture really learned
    assert abs(fp32 - int8) < 3


def test_float_state_has_the_float_model_keys(trained, quantized):
    assert set(nncf_qat.float_state(quantized)) == set(trained.state_dict())


def test_save_restore_of_a_quantized_model(quantized, splits, tmp_path):
    meta = {
        "spec": SPEC.model_dump(),
        "in_channels": 1,
        "num_classes": 10,
        "quantization": nncf_qat.config(quantized),
    }
    json.dumps(meta)  # plain JSON, no pickle
    save_model(quantized, tmp_path / "q", meta)
    restored, _ = load_model(tmp_path / "q")
    # Same memory layout as the trained model: a float reordering could move an activation
    # across a quantization step, which is not what this test is about.
    restored = model_to_device(restored, CPU)
    x = normalize(splits.test.images[:64], splits)
    torch.testing.assert_close(restored.eval()(x), quantized.eval()(x), atol=TOL["fp32"], rtol=0)


def test_qat_step_updates_weights_and_scales(quantized, splits):
    import copy

    model = copy.deepcopy(quantized)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(
        model,
        splits.train,
        splits,
        TrainConfig(epochs=0.1, lr=0.01),
        Distiller([("ce", 1.0, CEConfig())]),
        teacher=None,
        augment=AugmentConfig(),
        device=CPU,
        seed=0,
    )
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.endswith(".scale") for k in changed)  # quantizer ranges train too
    assert any(k.startswith("features") for k in changed)


def test_int8_onnx_agrees_with_pytorch_on_real_images(quantized, splits, tmp_path):
    example = torch.zeros(1, 1, 28, 28)
    path = tmp_path / "int8.onnx"
    stripped = nncf_qat.strip(quantized, example)
    export_onnx(stripped, example, path)
    before = path.stat().st_size
    store_int8_weights(path)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in model.graph.initializer)
    assert path.stat().st_size < before
    images = normalize(splits.test.images, splits)
    check = parity(path, quantized, images)
    assert check["top1_agreement"] >= TOL["int8_top1_agreement"]


def test_fp32_onnx_matches_pytorch(trained, splits, tmp_path):
    path = tmp_path / "fp32.onnx"
    export_onnx(trained, torch.zeros(1, 1, 28, 28), path)
    images = normalize(splits.test.images[:200], splits)
    check = parity(path, trained, images)
    assert check["max_abs_diff"] < TOL["onnx_fp32"] and check["top1_agreement"] == 100
    assert onnx_logits(path, images).shape == (200, 10)


def test_each_python_environment_builds_nncf_kernels_in_its_own_folder(tmp_path):
    """torch's build file names the environment's include paths: a shared folder would make
    two environments rebuild NNCF's kernels in turn. A folder the user set is kept."""
    import hashlib
    import os
    import subprocess
    import sys

    show = "import os, edgekd.quant.nncf_qat; print(os.environ['TORCH_EXTENSIONS_DIR'])"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)

    def folder(extra: dict[str, str]) -> str:
        run = subprocess.run(
            [sys.executable, "-c", show], env={**env, **extra}, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    prefix = subprocess.run(
        [sys.executable, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True
    ).stdout.strip()
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:12]
    assert folder({}) == str(tmp_path / "torch_extensions" / digest)
    assert folder({"TORCH_EXTENSIONS_DIR": "/chosen"}) == "/chosen"


@pytest.mark.parametrize(
    "spec",
    [
        {"arch": "tiny_cnn", "widths": [8, 16]},
        {"arch": "resnet_small", "widths": [8], "blocks": [1]},
    ],
)
def test_sequential_built_models_quantize(spec):
    """resnet_small and tiny_cnn are chains of layers: NNCF's hook store, added as a child of
    the model, must not be run as one of them (it was: "HookStorage is missing forward")."""
    model = zoo.build(ModelSpec(**spec), 1, 10).eval()
    images = torch.randn(4, 1, 28, 28)
    quantized = nncf_qat.quantize_inputs(model, [images], torch.device("cpu"))
    assert nncf_qat.is_quantized(quantized)
    assert quantized(images).shape == (4, 10)
