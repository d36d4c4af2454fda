"""The distiller: sums weighted, named loss terms and reports each one.

It also owns everything trained beside the student that is not the student: the losses'
connectors, DML's peers and BYOT's exit heads. Their parameters join the student's optimizer
and their state is saved in the stage's checkpoint; none of them is exported.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from edgekd.config.schema import BYOTConfig, DMLConfig, Strict
from edgekd.data.datasets import Batch
from edgekd.distill import functional
from edgekd.distill.hooks import FeaturePathError, capture, resolve, shapes
from edgekd.distill.losses import LOSSES, Loss, Outputs, ShapeError, Shapes
from edgekd.distill.specs import EMBEDDING


class DistillSetupError(Exception):
    """A loss term cannot be set up; `loc` is its place under `distill:` in the YAML."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


@dataclass
class Scheme:
    """How students and teachers are arranged; see DistillConfig."""

    name: str = "offline"
    dml: DMLConfig = field(default_factory=DMLConfig)
    byot: BYOTConfig | None = None
    multi_teacher: str = "average"
    teacher_weights: list[float] | None = None


class ExitHead(nn.Module):
    """A BYOT exit: 1×1 conv bottleneck to the deepest embedding's width, pooling, classifier."""

    def __init__(self, channels: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.pool(self.bottleneck(x))
        return self.fc(feature), feature


class Distiller(nn.Module):
    """Σ weight_i · loss_i(student, teacher, batch); also returns each term's value."""

    progress: float
    peer_flips: bool

    def __init__(
        self, terms: list[tuple[str, float, Strict]], scheme: Scheme | None = None
    ) -> None:
        super().__init__()
        self.weights = {name: weight for name, weight, _ in terms}
        self.terms = nn.ModuleDict({name: LOSSES.get(name)(cfg) for name, _, cfg in terms})
        self.scheme = scheme or Scheme()
        self.num_teachers = 1
        self.peers = nn.ModuleList()
        self.exits = nn.ModuleList()
        self.progress = 0.0
        self.peer_flips = False
        self._choice = torch.Generator().manual_seed(0)
        self._chosen = 0

    @property
    def losses(self) -> dict[str, Loss]:
        """The terms by name, typed (nn.ModuleDict holds them as plain modules)."""
        return cast(dict[str, Loss], dict(self.terms.items()))

    # --- what the training loop needs to know ---------------------------------------------

    @property
    def needs_teacher(self) -> bool:
        return any(term.needs_teacher for term in self.losses.values())

    def teacher_terms(self, teacher: int) -> list[Loss]:
        """The terms that read teacher `teacher` (all of them unless mode is split)."""
        reading = [t for t in self.losses.values() if t.needs_teacher]
        if self.scheme.multi_teacher != "split" or self.num_teachers == 1:
            return reading
        response = teacher == 0
        return [t for t in reading if (t.kind == "response") == response]

    def teacher_keys(self, teacher: int) -> list[str]:
        return sorted({k for term in self.teacher_terms(teacher) for k in term.teacher_keys()})

    def student_keys(self) -> list[str]:
        keys = {k for term in self.losses.values() for k in term.student_keys()}
        if self.scheme.byot is not None:
            keys |= {*self.scheme.byot.exits, EMBEDDING}
        return sorted(keys)

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"choice": self._choice.get_state()}  # random mode resumes with the same draws

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self._choice.set_state(state["choice"])

    def teachers_for_step(self) -> list[int]:
        """Which teachers this step reads (random mode draws one per batch)."""
        if not self.needs_teacher:
            return []
        if self.scheme.multi_teacher == "random" and self.num_teachers > 1:
            self._chosen = int(torch.randint(self.num_teachers, (1,), generator=self._choice))
            return [self._chosen]
        return [i for i in range(self.num_teachers) if self.teacher_terms(i)]

    # --- set-up ----------------------------------------------------------------------------

    def build(
        self,
        student: nn.Module,
        teachers: list[nn.Module | None],
        example: torch.Tensor,
        num_classes: int,
        num_data: int,
        fresh_student: bool = False,
        hflip: bool = False,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Resolve every hooked path, probe feature shapes with one forward of `example`, and
        build connectors, exits and peers. `teachers[i]` is None for a logits-only teacher.
        DML peers are re-initialised copies of a `fresh_student`; copies of a trained one see
        their own random mirror images (when `hflip` is allowed) so that they differ. `labels`
        are the training set's (CRD draws negatives from other classes)."""
        self.num_teachers = max(1, len(teachers))
        if self.scheme.multi_teacher == "split" and len(teachers) != 2:
            raise DistillSetupError(
                ("multi_teacher",),
                f"split needs exactly two teachers (teacher 0 for logits, teacher 1 for "
                f"features); there are {len(teachers)}",
            )
        for i, (name, term) in enumerate(self.losses.items()):
            readers = [j for j in range(self.num_teachers) if term in self.teacher_terms(j)]
            if name == "crd" and len(readers) > 1:
                raise DistillSetupError(
                    ("losses", i),
                    "crd keeps one memory bank of one teacher's embeddings; with several "
                    "teachers use multi_teacher: split (teacher 1 teaches crd)",
                )
        s_shapes = self._probe(student, self.student_keys(), example, "student")
        t_shapes: dict[str, torch.Size] = {}
        for i, teacher in enumerate(teachers):
            keys = self.teacher_keys(i)
            if keys and teacher is None:
                where = "the teacher stage's teacher" if i == 0 else f"distill.teachers[{i - 1}]"
                raise DistillSetupError(
                    ("teachers", i - 1) if i else ("losses",),
                    f"teacher {i} ({where}) is an ONNX model and gives logits only; "
                    f"{', '.join(self._feature_terms(i))} need a PyTorch teacher",
                )
            if keys and teacher is not None:
                found = self._probe(teacher, keys, example, f"teacher {i}")
                for key, shape in found.items():
                    if key in t_shapes and t_shapes[key] != shape:
                        raise DistillSetupError(
                            ("multi_teacher",),
                            f"feature {key!r} has shape {tuple(shape)} in teacher {i} but "
                            f"{tuple(t_shapes[key])} in another; use multi_teacher: split",
                        )
                    t_shapes[key] = shape
        info = Shapes(s_shapes, t_shapes, num_classes, num_data, labels)
        for i, (name, term) in enumerate(self.losses.items()):
            try:
                term.setup(info)
            except ShapeError as exc:
                raise DistillSetupError(
                    ("losses", i, "pairs", exc.pair), f"{name}: {exc}"
                ) from None
        if self.scheme.byot is not None:
            width = s_shapes[EMBEDDING][1]
            for exit_path in self.scheme.byot.exits:
                shape = s_shapes[exit_path]
                if len(shape) != 4:
                    raise DistillSetupError(
                        ("byot", "exits"), f"exit {exit_path!r} must output N×C×H×W feature maps"
                    )
                self.exits.append(ExitHead(shape[1], width, num_classes))
        if self.scheme.name == "dml":
            self.peers.extend(self._make_peers(student, fresh_student))
            self.peer_flips = hflip and not fresh_student

    def _feature_terms(self, teacher: int) -> list[str]:
        reading = self.teacher_terms(teacher)
        return [n for n, t in self.losses.items() if t in reading and t.teacher_keys()]

    def _probe(
        self, model: nn.Module, keys: list[str], example: torch.Tensor, who: str
    ) -> dict[str, torch.Size]:
        for key in keys:
            path = key.removesuffix(":input")
            try:
                resolve(model, path)
            except FeaturePathError as exc:
                raise DistillSetupError(self._locate(path, who), f"{who}: {exc}") from None
        return shapes(model, keys, example) if keys else {}

    def _locate(self, path: str, who: str) -> tuple[str | int, ...]:
        side = "student" if who == "student" else "teacher"
        for i, term in enumerate(self.losses.values()):
            for j, pair in enumerate(term.pairs):
                if getattr(pair, side) == path:
                    return ("losses", i, "pairs", j, side)
        if self.scheme.byot is not None and path in self.scheme.byot.exits:
            return ("byot", "exits", self.scheme.byot.exits.index(path))
        return ("losses",)

    def _make_peers(self, student: nn.Module, fresh: bool) -> list[nn.Module]:
        peers = []
        for i in range(1, self.scheme.dml.peers):
            peer = copy.deepcopy(student)
            if fresh:
                with torch.random.fork_rng():
                    torch.manual_seed(1000 + i)
                    for module in peer.modules():
                        reset = getattr(module, "reset_parameters", None)
                        if callable(reset) and module is not peer:
                            reset()
            peers.append(peer)
        return peers

    # --- pre-training of loss modules ------------------------------------------------------

    def pretrain(self, teacher_outputs: Iterable[Outputs], device: torch.device) -> list[str]:
        """Pre-train the terms that need it; returns their names."""
        names = [name for name, term in self.losses.items() if term.needs_pretraining]
        for name in names:
            self.losses[name].pretrain(teacher_outputs, device)
        return names

    # --- the loss --------------------------------------------------------------------------

    def _term_value(
        self, term: Loss, student: Outputs, teachers: dict[int, Outputs], batch: Batch
    ) -> torch.Tensor:
        if not term.needs_teacher:
            return term(student, None, batch)
        if self.scheme.multi_teacher == "random" and self.num_teachers > 1:
            return term(student, teachers[self._chosen], batch)
        readers = [i for i in range(self.num_teachers) if term in self.teacher_terms(i)]
        if len(readers) == 1:
            return term(student, teachers[readers[0]], batch)
        weights = self.scheme.teacher_weights or [1.0] * self.num_teachers
        total = sum(weights[i] for i in readers)
        value = student.logits.new_zeros(())
        for i in readers:
            value = value + weights[i] / total * term(student, teachers[i], batch)
        return value

    def _active(self) -> list[str]:
        # FitNets' first stage: hint terms alone until their `stage1` share of training is done.
        first = [n for n, t in self.losses.items() if self.progress < getattr(t.cfg, "stage1", 0)]
        return first or list(self.terms)

    def forward(
        self,
        student: Outputs,
        teachers: dict[int, Outputs] | Outputs | None,
        batch: Batch,
        images: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if isinstance(teachers, Outputs):
            teachers = {0: teachers}
        teachers = teachers or {}
        for term in self.losses.values():
            term.progress = self.progress
        total = student.logits.new_zeros(())
        logged: dict[str, float] = {}
        for name in self._active():
            value = self._term_value(self.losses[name], student, teachers, batch)
            total = total + self.weights[name] * value
            logged[name] = float(value.detach())
        if self.exits:
            value = self._byot(student, batch)
            total = total + value
            logged["byot"] = float(value.detach())
        if self.peers:
            assert images is not None, "dml needs the batch images to run the peers"
            value = self._dml(student, teachers, batch, images)
            total = total + value
            logged["dml"] = float(value.detach())
        return total, logged

    def _byot(self, student: Outputs, batch: Batch) -> torch.Tensor:
        """Zhang et al. 2019, eq. (1)–(3), for every exit i:
        (1 - α)·CE(q_i, y) + α·KD_T(q_i ‖ q_deepest) + λ·‖F_i - F_deepest‖²."""
        cfg = self.scheme.byot
        assert cfg is not None
        labels = batch.labels.to(student.logits.device)
        deepest = student.features[EMBEDDING].flatten(1).detach()
        total = student.logits.new_zeros(())
        for head, path in zip(self.exits, cfg.exits, strict=True):
            logits, feature = head(student.features[path])
            labelled = labels >= 0
            ce = (
                nn.functional.cross_entropy(logits[labelled], labels[labelled])
                if bool(labelled.any())
                else logits.sum() * 0
            )
            kd = functional.kd_loss(logits, student.logits.detach(), cfg.temperature)
            hint = (feature - deepest).pow(2).sum(1).mean()
            total = total + (1 - cfg.alpha) * ce + cfg.alpha * kd + cfg.feature_weight * hint
        return total

    def _dml(
        self, student: Outputs, teachers: dict[int, Outputs], batch: Batch, images: torch.Tensor
    ) -> torch.Tensor:
        """Zhang et al. 2018, eq. (6)–(8): each peer minimises its own loss plus the mean KL from
        every other peer's (detached) prediction. Peers get the logit-level terms of
        `distill.losses`; feature terms stay with the student."""
        cfg = self.scheme.dml
        outputs = [student.logits]
        total = student.logits.new_zeros(())
        gen = torch.Generator().manual_seed(int(batch.index[:1].sum()) + 1)
        for peer in self.peers:
            peer_images = images
            if self.peer_flips:
                mask = (torch.rand(len(images), generator=gen) < 0.5).to(images.device)
                peer_images = torch.where(mask[:, None, None, None], images.flip(3), images)
            logits = peer(peer_images)
            out = Outputs(logits)
            for name, term in self.losses.items():
                if term.kind in ("labels", "response"):
                    value = self._term_value(term, out, teachers, batch)
                    total = total + self.weights[name] * value
            outputs.append(logits)
        for i, logits in enumerate(outputs):
            others = [o.detach() for j, o in enumerate(outputs) if j != i]
            mimic = sum(functional.kd_loss(logits, o, cfg.temperature) for o in others)
            total = total + cfg.weight * mimic / len(others)
        return total

    def tap(self, model: nn.Module) -> AbstractContextManager[dict[str, torch.Tensor]]:
        """Hooks on the student for the features this distiller reads."""
        return capture(model, self.student_keys())
