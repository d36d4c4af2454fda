"""Cut a student from a trained `resnet_small` teacher (the `family: teacher` search space).

Depth: each stage keeps its first blocks. A BasicBlock after a stage's first maps its channels
to themselves, so dropping it keeps every shape, and the first block, which changes stride and
channels, always stays (ModelOpt's FastNAS and Minitron drop layers the same way; Minitron ranks
them, keeping the first is the simple, deterministic choice).

Width: torch-pruning's DepGraph (Fang et al., CVPR 2023) removes a stage's least important
channels, ranked by the L2 magnitude of every layer coupled to them: the stem or projection, each
block's second conv and BatchNorm, the residual adds and the next stage's inputs are one group;
each block's inner channels (its first conv's outputs) are another. The same importance as the
`prune` stage, applied to exact channel counts instead of a ratio, so the result is exactly the
candidate's `model:` and its weights load into that architecture, strictly.

When anything was removed, BatchNorm statistics are re-estimated on real images (adaptive BN,
as after `prune`), since every downstream activation distribution moved.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from edgekd.models import zoo
from edgekd.models.specs import ModelSpec
from edgekd.prune.depgraph import recalibrate_batchnorm
from edgekd.search.structural import TeacherCandidate


def cut(
    teacher: nn.Module,
    candidate: TeacherCandidate,
    in_channels: int,
    num_classes: int,
    images: list[torch.Tensor],
) -> nn.Module:
    """The candidate's network with the teacher's weights for what it keeps."""
    import torch_pruning as tp

    model: Any = copy.deepcopy(teacher).cpu().eval()
    features = model[0]
    stem, rest = list(features[:3]), list(features[3:])
    stages: list[list[Any]] = []  # BasicBlocks
    for n, keep in zip(candidate.teacher[1], candidate.depths, strict=True):
        stages.append(rest[:keep])
        rest = rest[n:]
    model[0] = nn.Sequential(*stem, *(b for stage in stages for b in stage))
    changed = candidate.depths != candidate.teacher[1]

    example = torch.zeros(1, in_channels, candidate.resolution, candidate.resolution)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    for stage, width in zip(stages, candidate.widths, strict=True):
        changed |= _keep(graph, stage[0].conv2, width, importance)
        for block in stage:
            changed |= _keep(graph, block.conv1, width, importance)
    if changed:
        recalibrate_batchnorm(model, images)
    student = zoo.build(ModelSpec.model_validate(candidate.model()), in_channels, num_classes)
    student.load_state_dict(model.state_dict())
    return student.train(teacher.training)


def _keep(graph: Any, conv: nn.Conv2d, count: int, importance: Any) -> bool:
    """Prune `conv`'s output channels (and everything coupled to them) down to the `count`
    most important; whether any were removed."""
    import torch_pruning as tp

    current = conv.out_channels
    if count >= current:
        return False
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, list(range(current)))
    scores = importance(group)
    drop = torch.argsort(scores)[: current - count].tolist()
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, sorted(drop)).prune()
    return True
