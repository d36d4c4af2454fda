"""The INT8 ladder on a model with one layer made fragile on purpose: sensitivity ranks it first,
the fallback leaves exactly it in float, and the exported Q/DQ graph keeps float ops only there."""

import onnx
import pytest
import torch
from torch import nn

from edgekd.config.schema import AugmentConfig, TrainConfig
from edgekd.data.datasets import normalize, sample
from edgekd.distill.distiller import Distiller
from edgekd.distill.losses.ce import CEConfig
from edgekd.distill.trainer import fit, predict
from edgekd.export.onnx import export_onnx, parity, store_int8_weights
from edgekd.export.qdq import optimize_qdq
from edgekd.quant import ladder, nncf_qat
from tests.conftest import TOL

CPU = torch.device("cpu")
# Channel 0 of bn1's output is scaled up by this and conv2's reads of it down by the same: the
# float function is unchanged (ReLU is positively homogeneous), but one per-tensor INT8 range
# must now hold values this much larger than the other channels', which all round to zero.
FRAGILE = 1000.0


class Net(nn.Module):
    """Three conv-BN-ReLU layers and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32))
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32))
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.relu3(self.conv3(self.relu2(self.conv2(x))))
        return self.fc(self.flat(self.pool(x)))


@pytest.fixture(scope="module")
def fragile(splits):
    torch.manual_seed(0)
    model = Net()
    fit(
        model,
        splits.train,
        splits,
        TrainConfig(epochs=5, lr=0.1, batch_size=64),
        Distiller([("ce", 1.0, CEConfig())]),
        teacher=None,
        augment=AugmentConfig(),
        device=CPU,
        seed=0,
    )
    model.eval()
    x = normalize(splits.val.images[:64], splits)
    before = model(x)
    with torch.no_grad():
        model.conv1[1].weight[0] *= FRAGILE
        model.conv1[1].bias[0] *= FRAGILE
        model.conv2[0].weight[:, 0] /= FRAGILE
    torch.testing.assert_close(model(x), before, atol=1e-3, rtol=1e-4)  # same float function
    return model


@pytest.fixture(scope="module")
def quantize(fragile, splits):
    calibration = sample(splits.train, 256, 0)
    return lambda ignored=None: nncf_qat.quantize(
        fragile, calibration, splits, 64, CPU, ignored=ignored
    )


def _logits(splits):
    return lambda model: predict(model, splits.val, splits, CPU)


def test_layers_are_the_weighted_layers_with_their_input_quantizers(fragile, quantize, splits):
    found = ladder.layers(fragile, quantize(), torch.zeros(1, 1, 28, 28))
    assert [layer.module for layer in found] == ["conv1.0", "conv2.0", "conv3.0", "fc"]
    by_module = {layer.module: layer for layer in found}
    # conv2 reads relu1's output: its weight quantizer and that activation quantizer make it INT8
    assert any("conv2" in h and h.startswith("pre_hooks") for h in by_module["conv2.0"].quantizers)
    assert any(h.startswith("post_hooks.relu1") for h in by_module["conv2.0"].quantizers)
    # the classifier's input quantizer sits on the pooling output, behind Flatten
    assert any(h.startswith("post_hooks.pool") for h in by_module["fc"].quantizers)


def test_the_fragile_layer_ranks_first_and_alone_stays_float(fragile, quantize, splits):
    logits, labels = _logits(splits), splits.val.labels
    ptq = quantize()
    fp32_logits = logits(fragile)
    fp32_acc, ptq_acc = ladder.accuracy(fp32_logits, labels), ladder.accuracy(logits(ptq), labels)
    assert fp32_acc > 60  # the fixture really learned
    assert fp32_acc - ptq_acc > 10  # and PTQ really broke it

    found = ladder.layers(fragile, ptq, torch.zeros(1, 1, 28, 28))
    ranking = ladder.sensitivity(ptq, found, logits, fp32_logits, labels)
    assert ranking[0].module == "conv2.0"
    assert ranking[0].gain > 10 and ranking[0].sqnr_db > max(s.sqnr_db for s in ranking[1:])
    # the probe left the PTQ model itself untouched
    assert ladder.accuracy(logits(ptq), labels) == ptq_acc

    estimated = ladder.estimates(ptq, ranking, found, 3, logits, labels)
    start = ladder.start_at(estimated, fp32_acc, budget=2.0)
    assert start == 1  # switching conv2 alone to float already meets the budget
    result, model = ladder.fallback(
        ranking,
        start,
        3,
        fp32_acc,
        budget=2.0,
        quantize=quantize,
        score=lambda m: ladder.accuracy(logits(m), labels),
    )
    assert result.met and result.last is not None
    assert result.last.float_layers == ["conv2.0"] and len(result.steps) == 1
    assert result.last.drop <= 2.0
    assert model is not None
    hooks = set(ladder.quantizers(model))
    assert "pre_hooks.conv1/0/conv2d/0__1" in hooks and "pre_hooks.conv3/0/conv2d/0__1" in hooks
    assert not any(h.startswith(("pre_hooks.conv2/", "post_hooks.relu1/")) for h in hooks)


def test_exported_graph_is_float_exactly_at_the_fallback_layer(fragile, quantize, splits, tmp_path):
    model = quantize(["conv2/0/conv2d/0"])
    example = torch.zeros(1, 1, 28, 28)
    stripped = nncf_qat.strip(model, example)
    qdq = tmp_path / "mixed_qdq.onnx"
    export_onnx(stripped, example, qdq)
    store_int8_weights(qdq)
    rewritten = tmp_path / "mixed.onnx"
    optimize_qdq(qdq, rewritten)
    x = normalize(splits.test.images[:300], splits)
    for path in (qdq, rewritten):
        graph = onnx.load(str(path)).graph
        producer = {o: n for n in graph.node for o in n.output}
        weights = {}
        for node in graph.node:
            if node.op_type in ("Conv", "Gemm"):
                source = producer.get(node.input[1])
                weights[node.name] = source is not None and source.op_type == "DequantizeLinear"
        float_ops = [name for name, dq in weights.items() if not dq]
        assert len(weights) == 4 and len(float_ops) == 1 and "conv2" in float_ops[0], weights
        check = parity(path, stripped, x)  # onnxruntime runs the mixed graph
        assert check["top1_agreement"] >= TOL["int8_top1_agreement"], check


def test_float_layers_ship_only_when_they_meet_the_budget_or_qat_is_off():
    from edgekd.quant.climb import keeps_float_layers

    assert keeps_float_layers("auto", 0.3, 0.2)  # budget met: no QAT, the float layers ship
    assert not keeps_float_layers("auto", 0.3, 0.38)  # QAT runs anyway: from all-INT8
    assert not keeps_float_layers("always", 0.3, 0.38)
    assert keeps_float_layers("never", 0.3, 0.38)  # no QAT to recover it: the best there is
