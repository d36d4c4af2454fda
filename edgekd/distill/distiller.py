"""The distiller: sums weighted, named loss terms, adds the scheme's term and reports each one.

It owns everything trained beside the student that is not the student: the losses'
connectors and the scheme's modules (DML's peers, BYOT's exit heads). Their parameters join
the student's optimizer and their state is saved in the stage's checkpoint; none of them is
exported. It knows no loss or scheme by name: it asks the classes (distill/loss.py,
distill/scheme.py) and the arrangement rules (distill/rules.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any, cast

import torch
from torch import nn

from edgekd.config.schema import Strict
from edgekd.data.datasets import Batch
from edgekd.distill import rules
from edgekd.distill.hooks import FeaturePathError, capture, resolve, shapes
from edgekd.distill.loss import LOSSES, Loss
from edgekd.distill.rules import DistillSetupError
from edgekd.distill.scheme import SCHEMES, Scheme, SchemeSetup, SchemeStep
from edgekd.distill.terms import Outputs, ShapeError, Shapes, build

__all__ = ["DistillSetupError", "Distiller"]


class Distiller(nn.Module):
    """Σ weight_i · loss_i(student, teacher, batch) + the scheme's term; also returns each
    term's value. `multi_teacher` says how several teachers feed the terms (average, random,
    split; see DistillConfig), `teacher_weights` weigh them in average mode."""

    progress: float

    def __init__(
        self,
        terms: list[tuple[str, float, Strict]],
        scheme: Scheme | None = None,
        multi_teacher: str = "average",
        teacher_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        names = [name for name, _, _ in terms]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise DistillSetupError(
                ("losses", len(names) - 1 - names[::-1].index(duplicate), "name"),
                f"the loss {duplicate!r} is listed twice; give each term once (a term takes "
                "several feature pairs in `pairs`)",
            )
        self.weights = {name: weight for name, weight, _ in terms}
        self.terms = nn.ModuleDict({name: build(LOSSES.get(name), cfg) for name, _, cfg in terms})
        if scheme is None:
            offline = SCHEMES.get("offline")
            scheme = build(offline, offline.Config())
        self.scheme = scheme
        self.multi_teacher = multi_teacher
        self.teacher_weights = teacher_weights
        self.num_teachers = 1
        self.progress = 0.0
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
        """The terms that read teacher `teacher`."""
        return [
            t
            for t in self.losses.values()
            if rules.reads_teacher(t, teacher, self.multi_teacher, self.num_teachers)
        ]

    def teacher_keys(self, teacher: int) -> list[str]:
        return sorted({k for term in self.teacher_terms(teacher) for k in term.teacher_keys()})

    def student_keys(self) -> list[str]:
        keys = {k for term in self.losses.values() for k in term.student_keys()}
        return sorted(keys | set(self.scheme.student_keys()))

    def pretraining(self) -> list[Loss]:
        """The terms with a phase before the student trains (FT's paraphraser)."""
        return [term for term in self.losses.values() if term.pretrains]

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"choice": self._choice.get_state()}  # random mode resumes with the same draws

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self._choice.set_state(state["choice"])

    def teachers_for_step(self) -> list[int]:
        """Which teachers this step reads (random mode draws one per batch)."""
        if not self.needs_teacher:
            return []
        if self.multi_teacher == "random" and self.num_teachers > 1:
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
        """Check the arrangement, resolve every hooked path, probe feature shapes with one
        forward of `example`, and build connectors and the scheme's modules. `teachers[i]` is
        None for a logits-only (ONNX) teacher. `fresh_student`: the student is untrained;
        `hflip`: mirror images are allowed; `labels` are the training set's (CRD draws
        negatives from other classes)."""
        self.num_teachers = max(1, len(teachers))
        rules.check(
            rules.Arrangement(
                terms=list(self.losses.items()),
                logits_only=[t is None for t in teachers],
                multi_teacher=self.multi_teacher,
                teacher_weights=self.teacher_weights,
            )
        )
        s_shapes = self._probe(student, self.student_keys(), example, "student")
        t_shapes: dict[str, torch.Size] = {}
        for i, teacher in enumerate(teachers):
            keys = self.teacher_keys(i)
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
        self.scheme.setup(SchemeSetup(student, s_shapes, num_classes, fresh_student, hflip))

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
        exits = getattr(self.scheme.cfg, "exits", [])
        if path in exits:
            return ("scheme", "exits", exits.index(path))
        return ("losses",)

    # --- pre-training of loss modules ------------------------------------------------------

    def pretrain(self, teacher_outputs: Iterable[Outputs], device: torch.device) -> list[str]:
        """Pre-train the terms that need it; returns their names."""
        names = [name for name, term in self.losses.items() if term.pretrains]
        for name in names:
            self.losses[name].pretrain(teacher_outputs, device)
        return names

    # --- the loss --------------------------------------------------------------------------

    def term_value(
        self, term: Loss, student: Outputs, teachers: dict[int, Outputs], batch: Batch
    ) -> torch.Tensor:
        """One term, fed by the teachers that read it (averaged with their weights)."""
        if not term.needs_teacher:
            return term(student, None, batch)
        if self.multi_teacher == "random" and self.num_teachers > 1:
            return term(student, teachers[self._chosen], batch)
        readers = [
            i
            for i in range(self.num_teachers)
            if rules.reads_teacher(term, i, self.multi_teacher, self.num_teachers)
        ]
        if len(readers) == 1:
            return term(student, teachers[readers[0]], batch)
        weights = self.teacher_weights or [1.0] * self.num_teachers
        total = sum(weights[i] for i in readers)
        value = student.logits.new_zeros(())
        for i in readers:
            value = value + weights[i] / total * term(student, teachers[i], batch)
        return value

    def _active(self) -> list[str]:
        # Terms that train alone first (FitNets' first stage) until their share is done.
        first = [n for n, t in self.losses.items() if self.progress < t.alone_until()]
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
            value = self.term_value(self.losses[name], student, teachers, batch)
            total = total + self.weights[name] * value
            logged[name] = float(value.detach())
        step = SchemeStep(
            self, student, teachers, batch, images if images is not None else batch.images
        )
        extra: Any = self.scheme.loss(step)
        if extra is not None:
            total = total + extra
            logged[self.scheme.name] = float(extra.detach())
        return total, logged

    def tap(self, model: nn.Module) -> AbstractContextManager[dict[str, torch.Tensor]]:
        """Hooks on the student for the features this distiller reads."""
        return capture(model, self.student_keys())
