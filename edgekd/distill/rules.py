"""Which teacher teaches which loss term, and the arrangements that cannot work: one validator,
called when a pipeline is checked (before anything runs) and again when a distiller is built
(with the teachers it really has). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgekd.distill.loss import LOSSES, Loss

if TYPE_CHECKING:
    from edgekd.plan import Plan

Loc = tuple[str | int, ...]


class DistillSetupError(Exception):
    """A loss term or teacher arrangement cannot be set up; `loc` is its place under
    `distill:` in the YAML."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def reads_teacher(term: type[Loss] | Loss, teacher: int, mode: str, count: int) -> bool:
    """Whether teacher `teacher` feeds `term`: every teacher-reading term reads every teacher,
    except in split mode (two teachers), where teacher 0 gives response knowledge and teacher
    1 feature and relation knowledge."""
    if term.reads == "labels":
        return False
    if mode != "split" or count == 1:
        return True
    return (term.reads == "response") == (teacher == 0)


@dataclass
class Arrangement:
    """The distillation set-up, as much of it as the caller knows."""

    terms: list[tuple[str, type[Loss] | Loss]]  # the terms of distill.losses, in order
    logits_only: list[bool]  # per teacher: an ONNX teacher gives logits, no features
    multi_teacher: str = "average"
    teacher_weights: list[float] | None = None
    assistant: bool = False  # TAKD: an assistant (another architecture) teaches
    unlabeled: bool = False

    @property
    def count(self) -> int:
        return max(1, len(self.logits_only))

    def readers(self, term: type[Loss] | Loss) -> list[int]:
        return [
            i for i in range(self.count) if reads_teacher(term, i, self.multi_teacher, self.count)
        ]


def check(a: Arrangement) -> None:
    """Raise `DistillSetupError` for the first arrangement that cannot work."""
    count = a.count
    if a.teacher_weights is not None:
        loc: Loc = ("teacher_weights",)
        if len(a.teacher_weights) != count:
            raise DistillSetupError(
                loc,
                f"{len(a.teacher_weights)} weights for {count} teachers "
                "(the teacher stage's, then distill.teachers)",
            )
        if min(a.teacher_weights) < 0 or sum(a.teacher_weights) <= 0:
            raise DistillSetupError(loc, "weights must be ≥ 0 with a positive sum")
        if a.multi_teacher != "average":
            raise DistillSetupError(
                loc, f"weights apply to multi_teacher: average, not {a.multi_teacher}"
            )
    if a.multi_teacher == "split" and count != 2:
        raise DistillSetupError(
            ("multi_teacher",),
            f"split needs exactly two teachers (the teacher stage's for logits, one in "
            f"distill.teachers for features); there are {count}",
        )
    if a.unlabeled and not any(term.reads != "labels" for _, term in a.terms):
        raise DistillSetupError(
            ("unlabeled",),
            "unlabeled images are taught by the teacher's soft targets: add a loss that reads "
            "the teacher (kd, dkd, ...)",
        )
    for j, (name, term) in enumerate(a.terms):
        loc = ("losses", j)
        readers = a.readers(term)
        if term.max_teachers is not None and len(readers) > term.max_teachers:
            raise DistillSetupError(
                loc,
                f"{name} reads at most {term.max_teachers} teacher (crd keeps one memory bank "
                f"of one teacher's embeddings); with several teachers use multi_teacher: split "
                f"(teacher 1 teaches {name})",
            )
        if term.reads not in ("feature", "relation"):  # no hooked features
            continue
        if a.assistant:
            raise DistillSetupError(
                loc,
                f"{name} pairs layers of the teacher and the student by name; with an "
                "assistant the layer names of the teacher do not apply to it. Use logit "
                "losses with `assistant:`",
            )
        for i in readers:
            if i < len(a.logits_only) and a.logits_only[i]:
                where = "the teacher stage's teacher" if i == 0 else f"distill.teachers[{i - 1}]"
                raise DistillSetupError(
                    loc,
                    f"{name} reads features, but teacher {i} ({where}) is an ONNX model that "
                    "gives logits only; use a PyTorch teacher, or multi_teacher: split with a "
                    "PyTorch teacher 1",
                )


def from_plan(plan: Plan, assistant: bool = False) -> Arrangement:
    """The arrangement a checked pipeline asks for: its loss terms, and teacher 0 (the stage
    that produces the `teacher` artifact) followed by `distill.teachers`."""
    cfg = plan.config.distill
    teacher_stage = next((s for s in plan.stages if "teacher" in s.stage.produces), None)
    first_onnx = teacher_stage is not None and getattr(teacher_stage.cfg, "onnx", None) is not None
    return Arrangement(
        terms=[(name, LOSSES.get(name)) for name, _, _ in plan.losses],
        logits_only=[first_onnx] + [t.onnx is not None for t in cfg.teachers],
        multi_teacher=cfg.multi_teacher,
        teacher_weights=cfg.teacher_weights,
        assistant=assistant,
        unlabeled=cfg.unlabeled is not None,
    )


def check_plan(plan: Plan, assistant: bool = False) -> None:
    """`check` on the plan's arrangement, the error naming the YAML line."""
    try:
        check(from_plan(plan, assistant))
    except DistillSetupError as exc:
        raise plan.doc.error(("distill", *exc.loc), str(exc)) from None
