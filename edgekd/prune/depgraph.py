"""Channel pruning with torch-pruning's DepGraph (Fang et al., CVPR 2023).

DepGraph finds every layer coupled to a pruned channel (residual adds, depthwise convs, norms),
so whole groups are removed together and the model stays valid.
"""

from __future__ import annotations

import torch
from torch import nn


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers whose outputs are the class logits: never pruned."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
        and (m.out_features if isinstance(m, nn.Linear) else m.out_channels) == num_classes
    ]


def prune_channels(
    model: nn.Module, example: torch.Tensor, ratio: float, round_to: int, num_classes: int
) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer, ranked by L2 magnitude, keeping
    channel counts multiples of `round_to` (odd counts waste tensor-core and SIMD lanes)."""
    import torch_pruning as tp

    model = model.eval()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=classifier_layers(model, num_classes),
        round_to=round_to,
    )
    pruner.step()
    return model


def channel_counts(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def recalibrate_batchnorm(model: nn.Module, images: list[torch.Tensor]) -> None:
    """Re-estimate BatchNorm running statistics on `images` after channels were removed.

    Pruning shifts every downstream activation distribution, so the stored statistics no longer
    fit and accuracy collapses before any fine-tuning; recomputing them first ("adaptive BN",
    Li et al., EagleEye, ECCV 2020) recovers most of it at the cost of a few forward passes.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    was_training = model.training
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for batch in images:
            model(batch)
    for norm, momentum in zip(norms, saved, strict=True):
        norm.momentum = momentum
    model.train(was_training)
