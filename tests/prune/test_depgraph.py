"""DepGraph pruning: rounded channel counts, a valid model, and zero channels removed losslessly."""

import torch

from edgekd.models import zoo
from edgekd.models.specs import ModelSpec
from edgekd.prune.depgraph import channel_counts, prune_channels


def test_pruned_mobilenet_runs_with_rounded_channels():
    spec = ModelSpec(
        arch="mobilenetv2",
        width=1.0,
        last_channel=128,
        blocks=[[1, 16, 1, 1], [4, 24, 2, 2], [4, 32, 2, 2]],
    )
    model = zoo.build(spec, 1, 10).eval()
    before = zoo.count_params(model)
    example = torch.zeros(1, 1, 28, 28)
    prune_channels(model, example, 0.3, 8, 10)
    assert zoo.count_params(model) < 0.75 * before
    assert all(c % 8 == 0 for c in channel_counts(model) if c != 10)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_pruning_zeroed_channels_changes_nothing():
    torch.manual_seed(0)
    model = zoo.build(ModelSpec(arch="tiny_cnn", widths=[16]), 1, 10).eval()
    conv, bn = model[0][0], model[0][1]
    dead = torch.arange(0, 16, 2)  # half the first layer's channels output exactly zero
    with torch.no_grad():
        conv.weight[dead] = 0
        bn.weight[dead] = 0
        bn.bias[dead] = 0
        model[1][2].weight[:, dead] = 0  # their consumer too: the whole group is zero
        for i in range(len(bn.running_mean)):  # give the live channels real statistics
            bn.running_mean[i] = 0.1 * i
            bn.running_var[i] = 1 + 0.1 * i
    x = torch.randn(4, 1, 28, 28)
    expected = model(x)
    prune_channels(model, torch.zeros(1, 1, 28, 28), 0.5, 1, 10)
    assert model[0][0].out_channels == 8
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_batchnorm_recalibration_matches_the_data():
    from edgekd.prune.depgraph import recalibrate_batchnorm

    torch.manual_seed(0)
    model = zoo.build(ModelSpec(arch="tiny_cnn", widths=[4]), 1, 10).eval()
    images = [torch.randn(32, 1, 8, 8) * 2 + 1 for _ in range(3)]
    recalibrate_batchnorm(model, images)
    with torch.no_grad():
        conv_out = torch.cat([model[0][0](x) for x in images])
    bn = model[0][1]
    torch.testing.assert_close(bn.running_mean, conv_out.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert bn.momentum == 0.1 and not model.training  # settings restored
