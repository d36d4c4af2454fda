"""Torch-Pruning's channel importance criteria by name (the prune stage's `importance:`), the
gradients the gradient-based ones need, and the latency-aware ranking of `prune.latency`.

Criteria (torch-pruning 1.6.1 classes):
- `l1`, `l2`: the L1/L2 norm of each filter of the group's first layer (Li et al., ICLR 2017);
- `group_norm` (the default, and what edgekd used before the criterion was a choice): DepGraph's
  group L2 norm over every coupled layer of the group (Fang et al., CVPR 2023);
- `taylor`: first-order Taylor expansion of the loss (Molchanov et al., CVPR 2019), from
  gradients of the cross-entropy on a few labelled training batches;
- `hessian`: Optimal Brain Damage's diagonal Hessian (LeCun et al., NeurIPS 1989), from squared
  per-image gradients. torch-pruning 1.6.1's `accumulate_grad` compares parameter names against
  a dict keyed by parameters, so it keeps only the last image's gradient; `_Hessian` below
  accumulates every image's, as the paper's estimate needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from edgekd.registry import Registry

if TYPE_CHECKING:  # torch is imported where it is used: `edgekd validate` reads the names
    import torch
    from torch import nn

IMPORTANCE: Registry[Callable[[], Any]] = Registry("importance criterion")
GRADIENT_IMAGES = 256  # labelled training images the gradient-based criteria read
HESSIAN_IMAGES = 64  # of which per-image gradients (one backward pass each) for `hessian`


def _tp() -> Any:
    import torch_pruning as tp

    return tp


@IMPORTANCE.register("l1")
def _l1() -> Any:
    return _tp().importance.MagnitudeImportance(p=1, group_reduction="first")


@IMPORTANCE.register("l2")
def _l2() -> Any:
    return _tp().importance.MagnitudeImportance(p=2, group_reduction="first")


@IMPORTANCE.register("group_norm")
def _group_norm() -> Any:
    return _tp().importance.MagnitudeImportance(p=2)


@IMPORTANCE.register("taylor")
def _taylor() -> Any:
    return _tp().importance.TaylorImportance()


@IMPORTANCE.register("hessian")
def _hessian() -> Any:
    tp = _tp()

    class _Hessian(tp.importance.HessianImportance):  # type: ignore[name-defined]
        def accumulate_grad(self, model: nn.Module) -> None:
            for param in model.parameters():
                if param.grad is not None:
                    square = param.grad.detach().pow(2)
                    self._accu_grad[param] = self._accu_grad.get(param, 0) + square
                    self._counter[param] = self._counter.get(param, 0) + 1

    return _Hessian()


def needs_gradients(name: str) -> bool:
    return name in ("taylor", "hessian")


def prepare(name: str, scorer: Any, model: nn.Module, batches: Iterable[Any]) -> None:
    """Give a gradient-based criterion what it reads: the cross-entropy's gradients on the
    `batches` (labelled, normalised), summed (taylor) or squared per image (hessian)."""
    from torch import nn

    if not needs_gradients(name):
        return
    was_training = model.training
    model.eval()  # BatchNorm's statistics are not what is being scored
    model.zero_grad()
    seen = 0
    for images, labels in batches:
        if name == "taylor":
            nn.functional.cross_entropy(model(images), labels).backward()
            continue
        for image, label in zip(images, labels, strict=True):
            if seen >= HESSIAN_IMAGES:
                break
            model.zero_grad()
            nn.functional.cross_entropy(model(image[None]), label[None]).backward()
            scorer.accumulate_grad(model)
            seen += 1
    model.train(was_training)


def scores(
    model: nn.Module, example: torch.Tensor, scorer: Any, ignored: list[nn.Module]
) -> dict[str, torch.Tensor]:
    """`scorer`'s channel importance for every group DepGraph prunes in `model`, by the name of
    the group's root layer: computed once on the trained model, then applied to any copy of
    it (`Lookup`), so every trial pruning of a search ranks channels the same way."""
    import torch_pruning as tp
    from torch import nn

    graph = tp.DependencyGraph().build_dependency(model.eval(), example)
    names = {module: name for name, module in model.named_modules()}
    out = {}
    for group in graph.get_all_groups(
        ignored_layers=ignored, root_module_types=[nn.modules.conv._ConvNd, nn.Linear]
    ):
        imp = scorer(group)
        if imp is not None:
            out[names[group[0].dep.target.module]] = imp.detach().cpu()
    return out


class Lookup:
    """An importance criterion serving `scores` (by root layer name) for `model` or a copy."""

    def __init__(self, model: nn.Module, by_name: dict[str, torch.Tensor]) -> None:
        self.by_module = {m: by_name[n] for n, m in model.named_modules() if n in by_name}

    def __call__(self, group: Any) -> torch.Tensor | None:
        return self.by_module.get(group[0].dep.target.module)
