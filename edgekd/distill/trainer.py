"""The training loop used wherever a model is trained: teacher, student, QAT, prune recovery."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from edgekd import distributed
from edgekd.artifacts import atomic_path
from edgekd.config.schema import AugmentConfig, TrainConfig
from edgekd.data.datasets import ImageSet, Splits, batches, model_to_device, to_device
from edgekd.distill.distiller import Distiller
from edgekd.distill.teacher import Teacher
from edgekd.distill.terms import Outputs
from edgekd.errors import EdgeKDError, WeightsError


def evaluate(
    model: nn.Module,
    data: ImageSet,
    splits: Splits,
    device: torch.device,
    batch_size: int = 256,
    *,
    shard: bool = False,
) -> float:
    """Top-1 accuracy (%) of `model` on `data`.

    `shard`: under torchrun, every rank scores every world()-th image from its rank on and the
    counts are summed over the ranks (the ranks hold the same model, so the accuracy is the one
    process's, for 1/N of the work). Every rank must then call it, as the training stages do."""
    if shard and distributed.active():
        data = data.subset(torch.arange(distributed.rank(), len(data), distributed.world()))
    logits = predict(model, data, splits, device, batch_size)
    counts = {"correct": float((logits.argmax(1) == data.labels).sum()), "seen": float(len(data))}
    if shard:
        counts = distributed.total(counts, device)
    return counts["correct"] / max(counts["seen"], 1.0) * 100


def predict(
    model: nn.Module, data: ImageSet, splits: Splits, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for batch in batches(data, splits, batch_size, device=device):
            out.append(model(to_device(batch.images, device)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    # No weight decay on biases and norm scales (common practice since Goyal et al. 2017).
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, total: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25
        )
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def fit(
    model: nn.Module,
    train: ImageSet,
    splits: Splits,
    cfg: TrainConfig,
    distiller: Distiller,
    *,
    teacher: Teacher | list[Teacher] | None,
    augment: AugmentConfig,
    device: torch.device,
    seed: int,
    checkpoint: Path | None = None,
    key: str = "",
    val: ImageSet | None = None,
    console: Console | None = None,
    desc: str = "train",
) -> list[dict[str, float]]:
    """Train `model` in place; returns one record per epoch (loss terms, val accuracy).

    `distiller` must be built (`Distiller.build`) when its terms read features; its trained
    modules (connectors, peers, exits) share the student's optimizer. `teacher` is one teacher
    or the list the distiller's multi-teacher mode reads. With `checkpoint`, the state after
    every epoch is written there (atomically) and a run killed mid-way continues from the last
    finished epoch when `key` matches.
    """
    console = console or Console()
    teachers = teacher if isinstance(teacher, list) else [teacher] if teacher else []
    model_to_device(model, device).train()
    distiller.to(device).train()
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = max(1, round(cfg.epochs * steps_per_epoch))
    epochs = math.ceil(total_steps / steps_per_epoch)
    opt = torch.optim.SGD(
        _param_groups([model, distiller], cfg.weight_decay),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
    )
    sched = _scheduler(opt, cfg, total_steps)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    first_epoch = 0
    state = None
    if checkpoint is not None and checkpoint.exists() and distributed.is_main():
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file: start the stage over
            raise WeightsError(
                f"cannot read checkpoint {checkpoint}: {exc}; delete it to "
                "restart this stage from its beginning"
            ) from exc
    state = distributed.broadcast(state)  # under torchrun every rank resumes from rank 0's
    if state is not None and state.get("key") == key:
        model.load_state_dict(state["model"])
        distiller.load_state_dict(state["distiller"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        if "torch_rng" in state:  # dropout masks continue where they were
            torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        history = state["history"]
        first_epoch = int(state["epoch"])
        console.print(f"  resuming {desc} after epoch {first_epoch}/{epochs}")
    step = first_epoch * steps_per_epoch
    if first_epoch == 0:
        _pretrain(distiller, teachers, train, splits, cfg, device, console)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
    )
    # Under torchrun the student trains in DDP (its gradients averaged over the ranks as they
    # are computed); the loss modules' few parameters (connectors, peers) are averaged after
    # the backward pass: DDP cannot wrap the distiller, whose inputs are not tensors.
    net = _compiled(distributed.wrap(model, device), model, cfg, distiller, console)
    amp = _mixed_precision(model, cfg, device, console)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if state is not None and state.get("key") == key and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    with Progress(*columns, console=console, transient=False) as progress:
        for epoch in range(first_epoch, epochs):
            steps = min(steps_per_epoch, total_steps - step)
            task = progress.add_task(f"{desc} epoch {epoch + 1}/{epochs}", total=steps, status="")
            sums: dict[str, float] = {}
            seen = 0
            for batch in batches(
                train,
                splits,
                cfg.batch_size,
                shuffle=True,
                augment=augment,
                generator=gen,
                limit=steps * cfg.batch_size,
                shard=True,
                device=device,
            ):
                images = to_device(batch.images, device)
                distiller.progress = step / total_steps
                with torch.autocast(device.type, amp or torch.bfloat16, enabled=amp is not None):
                    with distiller.tap(model) as features:
                        student = Outputs(net(images), features)
                    teacher_out = {
                        i: teachers[i].outputs(batch, distiller.teacher_keys(i))
                        for i in distiller.teachers_for_step()
                    }
                    loss, terms = distiller(student, teacher_out, batch, images)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                distributed.average_gradients(distiller)
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                seen += 1
                for name, value in {"loss": float(loss.detach()), **terms}.items():
                    sums[name] = sums.get(name, 0.0) + value
                progress.update(task, advance=1, status=f"loss {sums['loss'] / seen:.3f}")
            means = distributed.mean({k: v / max(seen, 1) for k, v in sums.items()}, device)
            record = {"epoch": epoch + 1, **means}
            if val is not None and len(val):
                record["val_acc"] = evaluate(model, val, splits, device, shard=True)
                progress.update(
                    task, status=f"loss {record['loss']:.3f} val {record['val_acc']:.2f}%"
                )
            history.append(record)
            if not console.is_terminal:  # logs and CI: one plain line per epoch
                console.print(
                    f"  {desc} epoch {epoch + 1}/{epochs}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")
                )
            if checkpoint is not None and distributed.is_main():
                with atomic_path(checkpoint) as tmp:
                    torch.save(
                        {
                            "key": key,
                            "epoch": epoch + 1,
                            "model": model.state_dict(),
                            "distiller": distiller.state_dict(),
                            "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(),
                            "generator": gen.get_state(),
                            "torch_rng": torch.get_rng_state(),
                            **(
                                {"cuda_rng": torch.cuda.get_rng_state_all()}
                                if torch.cuda.is_available()
                                else {}
                            ),
                            "history": history,
                            **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                        },
                        tmp,
                    )
    return history


def _is_quantized(model: nn.Module) -> bool:
    """Whether NNCF's fake quantizers are in `model` (it trains as QAT)."""
    return any(type(m).__module__.startswith("nncf") for m in model.modules())


def _compiled(
    net: nn.Module, model: nn.Module, cfg: TrainConfig, distiller: Distiller, console: Console
) -> nn.Module:
    """`net` (the model, or its DDP wrapper) through torch.compile when `train.compile` asks,
    except where compiling is known not to hold: NNCF's fake-quantized modules, and forward
    hooks on the student's layers (a loss reading its features), which compiled graphs skip
    or break on."""
    if not cfg.compile:
        return net
    if _is_quantized(model):
        console.print("  compile: ignored: NNCF's fake-quantized model trains eagerly")
        return net
    if distiller.student_keys():
        console.print("  compile: ignored: a loss reads the student's features through hooks")
        return net
    return torch.compile(net)  # type: ignore[return-value]


def _mixed_precision(
    model: nn.Module, cfg: TrainConfig, device: torch.device, console: Console
) -> torch.dtype | None:
    """The autocast dtype of `cfg.amp` on `device` (None: FP32). A model with NNCF's fake
    quantizers trains in FP32 whatever `amp` says: their scales and rounding are FP32 math."""
    if cfg.amp == "off":
        return None
    if _is_quantized(model):
        console.print(f"  amp: {cfg.amp} ignored: NNCF's fake-quantized model trains in FP32")
        return None
    if cfg.amp == "fp16" and device.type != "cuda":
        raise EdgeKDError(
            f"train.amp: fp16 needs a CUDA device (this stage trains on {device.type}); use "
            "amp: bf16 on a CPU"
        )
    return torch.float16 if cfg.amp == "fp16" else torch.bfloat16


def _pretrain(
    distiller: Distiller,
    teachers: list[Teacher],
    train: ImageSet,
    splits: Splits,
    cfg: TrainConfig,
    device: torch.device,
    console: Console,
) -> None:
    """Train the loss modules that must be ready first (FT's paraphraser) on the teacher's
    features of the un-augmented training images."""
    terms = distiller.pretraining()
    if not terms:
        return
    reader = next(i for i in range(len(teachers)) if terms[0] in distiller.teacher_terms(i))
    teacher = teachers[reader]
    keys = distiller.teacher_keys(reader)
    epochs = max(t.pretrain_epochs() for t in terms)
    limit = round(epochs * len(train))
    gen = torch.Generator().manual_seed(0)

    def outputs() -> Iterator[Outputs]:
        seen = 0
        while seen < limit:
            for batch in batches(train, splits, cfg.batch_size, shuffle=True, generator=gen):
                if seen >= limit:
                    return
                seen += len(batch.labels)
                yield teacher.outputs(batch, keys)

    done = distiller.pretrain(outputs(), device)
    console.print(f"  pre-trained {', '.join(done)} on {limit} teacher feature maps")
