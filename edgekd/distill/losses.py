"""Registered loss modules: forward(student: Outputs, teacher: Outputs | None, batch) -> Tensor.

A loss reads the logits and the features named by its config's `pairs`; modules it trains with
the student (regressors, translators, embedding heads) are built in `setup` once the feature
shapes are known, and their parameters join the student's optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.data.datasets import Batch
from edgekd.distill import functional, specs
from edgekd.distill.hooks import feature_key
from edgekd.registry import Registry


@dataclass
class Outputs:
    """A model's logits and the named features captured by hooks on dotted module paths."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Shapes:
    """What a loss needs to know to build its trained modules."""

    student: dict[str, torch.Size]
    teacher: dict[str, torch.Size]
    num_classes: int
    num_data: int
    labels: torch.Tensor | None = None  # of the training set (-1: unlabeled), for CRD


class ShapeError(ValueError):
    """Two features that cannot be paired, with the reason; `pair` is its index in `pairs`."""

    def __init__(self, pair: int, message: str) -> None:
        super().__init__(message)
        self.pair = pair


class Loss(nn.Module):
    """Base of registered losses. `progress` (0 → 1 over the stage's training) is set by the
    distiller before every step."""

    needs_teacher: ClassVar[bool] = True
    progress: float

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.progress = 0.0

    @property
    def kind(self) -> str:
        return str(self.cfg.kind)

    @property
    def pairs(self) -> list[specs.FeaturePair]:
        return list(getattr(self.cfg, "pairs", []))

    def student_keys(self) -> list[str]:
        return [feature_key(p.student, p.capture) for p in self.pairs]

    def teacher_keys(self) -> list[str]:
        return [feature_key(p.teacher, p.capture) for p in self.pairs]

    def setup(self, shapes: Shapes) -> None:
        """Build trained modules from the feature shapes (called once, before training)."""

    def pretrain(self, teacher_outputs: Iterable[Outputs], device: torch.device) -> None:
        """Train anything that must be ready before the student's training (FT's paraphraser)."""

    @property
    def needs_pretraining(self) -> bool:
        return False

    def features(self, student: Outputs, teacher: Outputs) -> list[tuple[torch.Tensor, ...]]:
        return [
            (student.features[s], teacher.features[t])
            for s, t in zip(self.student_keys(), self.teacher_keys(), strict=True)
        ]

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[type[Loss]] = Registry("loss")


def _labels(batch: Batch, device: torch.device) -> torch.Tensor:
    return batch.labels.to(device)


@LOSSES.register("ce")
class CrossEntropy(Loss):
    needs_teacher = False

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        labels = _labels(batch, student.logits.device)
        if not bool((labels >= 0).any()):  # a batch of unlabeled images only
            return student.logits.sum() * 0
        return F.cross_entropy(
            student.logits, labels, ignore_index=-1, label_smoothing=self.cfg.label_smoothing
        )


@LOSSES.register("kd")
class HintonKD(Loss):
    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        return functional.kd_loss(student.logits, teacher.logits, self.cfg.temperature)


@LOSSES.register("mse")
class LogitMSE(Loss):
    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        return functional.logit_mse_loss(student.logits, teacher.logits)


@LOSSES.register("kd_mse")
class KDMSE(Loss):
    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        return functional.kd_mse_loss(
            student.logits, teacher.logits, self.cfg.temperature, self.cfg.alpha
        )


@LOSSES.register("dkd")
class DKD(Loss):
    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        labels = _labels(batch, student.logits.device)
        # Unlabeled images: the teacher's top class stands in as the target class.
        labels = torch.where(labels >= 0, labels, teacher.logits.argmax(1))
        ramp = min(1.0, self.progress / self.cfg.warmup) if self.cfg.warmup else 1.0
        return ramp * functional.dkd_loss(
            student.logits,
            teacher.logits,
            labels,
            self.cfg.alpha,
            self.cfg.beta,
            self.cfg.temperature,
        )


def match_spatial(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two feature maps to the other's height and width."""
    if s.ndim != 4 or t.ndim != 4 or s.shape[2:] == t.shape[2:]:
        return s, t
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    return F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)


def connector(student: torch.Size, teacher: torch.Size, pair: int) -> nn.Module:
    """A trained map from the student's feature width to the teacher's: 1×1 conv + BN for
    feature maps, linear for vectors, identity when the widths already agree."""
    if len(student) == 4 and len(teacher) == 4:
        if student[1] == teacher[1]:
            return nn.Identity()
        return nn.Sequential(
            nn.Conv2d(student[1], teacher[1], 1, bias=False), nn.BatchNorm2d(teacher[1])
        )
    if len(student) == 2 and len(teacher) == 2:
        return nn.Identity() if student[1] == teacher[1] else nn.Linear(student[1], teacher[1])
    if len(student) == 4 and len(teacher) == 2:
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(student[1], teacher[1])
        )
    raise ShapeError(
        pair,
        f"cannot pair a student feature of shape {tuple(student[1:])} with a teacher feature "
        f"of shape {tuple(teacher[1:])}: hook a student layer with spatial maps, or pick "
        "a teacher layer of the same rank",
    )


class PairedLoss(Loss):
    """A loss summed over feature pairs, each student feature through its own connector."""

    connectors: nn.ModuleList

    def setup(self, shapes: Shapes) -> None:
        self.connectors = nn.ModuleList(
            connector(shapes.student[s], shapes.teacher[t], i)
            for i, (s, t) in enumerate(zip(self.student_keys(), self.teacher_keys(), strict=True))
        )

    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        total = student.logits.new_zeros(())
        for conn, (s, t) in zip(self.connectors, self.features(student, teacher), strict=True):
            total = total + self.pair_loss(*match_spatial(conn(s), t.detach()))
        return total


@LOSSES.register("fitnet")
class FitNet(PairedLoss):
    def pair_loss(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return functional.hint_loss(s, t)


@LOSSES.register("at")
class AttentionTransfer(Loss):
    """Attention maps are channel-free: no connector, only spatial pooling when sizes differ."""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        total = student.logits.new_zeros(())
        for s, t in self.features(student, teacher):
            total = total + functional.at_loss(*match_spatial(s, t), p=self.cfg.p)
        return total


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]


@LOSSES.register("ft")
class FactorTransfer(Loss):
    """Paraphraser: 3 conv layers C → k·C (encoder) and back (decoder), trained to reconstruct
    the teacher's features; translator: 3 conv layers on the student, C_s → k·C."""

    encoders: nn.ModuleList
    decoders: nn.ModuleList
    translators: nn.ModuleList
    paraphraser_ready: torch.Tensor

    @property
    def needs_pretraining(self) -> bool:
        return True

    def setup(self, shapes: Shapes) -> None:
        encoders, decoders, translators = [], [], []
        for i, (s, t) in enumerate(zip(self.student_keys(), self.teacher_keys(), strict=True)):
            c_s, c_t = shapes.student[s], shapes.teacher[t]
            if len(c_s) != 4 or len(c_t) != 4:
                raise ShapeError(i, "ft pairs feature maps (N×C×H×W) on both models")
            c, f = c_t[1], max(1, round(c_t[1] * self.cfg.rate))
            encoders.append(nn.Sequential(*_conv_bn(c, c), *_conv_bn(c, f), *_conv_bn(f, f)))
            decoders.append(nn.Sequential(*_conv_bn(f, f), *_conv_bn(f, c), *_conv_bn(c, c)))
            translators.append(
                nn.Sequential(*_conv_bn(c_s[1], c_s[1]), *_conv_bn(c_s[1], f), *_conv_bn(f, f))
            )
        self.encoders = nn.ModuleList(encoders)
        self.decoders = nn.ModuleList(decoders)
        self.translators = nn.ModuleList(translators)
        self.register_buffer("paraphraser_ready", torch.zeros((), dtype=torch.bool))

    def pretrain(self, teacher_outputs: Iterable[Outputs], device: torch.device) -> None:
        """Kim et al. §3.1: train the paraphraser alone with the reconstruction loss ‖x - P(x)‖²."""
        if bool(self.paraphraser_ready):
            return
        params = [*self.encoders.parameters(), *self.decoders.parameters()]
        opt = torch.optim.Adam(params, lr=self.cfg.paraphraser_lr)
        self.encoders.train()
        self.decoders.train()
        for outputs in teacher_outputs:
            loss = sum(
                F.mse_loss(dec(enc(outputs.features[t])), outputs.features[t])
                for enc, dec, t in zip(
                    self.encoders, self.decoders, self.teacher_keys(), strict=True
                )
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
        for p in params:
            p.requires_grad_(False)  # the paraphraser stays fixed while the student trains
        self.paraphraser_ready.fill_(True)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        self.encoders.eval()
        total = student.logits.new_zeros(())
        pairs = zip(self.translators, self.encoders, self.features(student, teacher), strict=True)
        for translate, encode, (s, t) in pairs:
            with torch.no_grad():
                factor_t = encode(t)
            factor_s, factor_t = match_spatial(translate(s), factor_t)
            total = total + functional.ft_loss(factor_s, factor_t)
        return total


class RelationLoss(Loss):
    """Batch relations of each feature pair; widths may differ, so no connector is needed."""

    def relation(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        total = student.logits.new_zeros(())
        for s, t in self.features(student, teacher):
            total = total + self.relation(s.flatten(1), t.detach().flatten(1))
        return total


@LOSSES.register("rkd")
class RKD(RelationLoss):
    def relation(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.cfg.distance_weight * functional.rkd_distance_loss(
            s, t
        ) + self.cfg.angle_weight * functional.rkd_angle_loss(s, t)


@LOSSES.register("cckd")
class CCKD(RelationLoss):
    def relation(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return functional.cckd_loss(s, t, self.cfg.gamma, self.cfg.order)


@LOSSES.register("sp")
class SimilarityPreserving(RelationLoss):
    def relation(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return functional.sp_loss(s, t)


@LOSSES.register("pkt")
class PKT(RelationLoss):
    def relation(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return functional.pkt_loss(s, t)


class _Embed(nn.Module):
    """CRD's critic head: flatten, linear to feat_dim, L2-normalise."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


@LOSSES.register("crd")
class CRD(Loss):
    """Tian et al. 2020: student and teacher embeddings, one memory bank of each over the whole
    training set; the student's anchor is contrasted with the teacher memory and vice versa.
    Negatives are other images drawn uniformly, from other classes when the anchor has a label
    (the authors' "exact" mode). Z is estimated on the first batch and kept (authors' code)."""

    embed_s: _Embed
    embed_t: _Embed
    memory_s: torch.Tensor
    memory_t: torch.Tensor
    z: torch.Tensor

    def setup(self, shapes: Shapes) -> None:
        if len(self.pairs) != 1:
            raise ShapeError(1, "crd contrasts one embedding pair; give exactly one pair")
        s_shape = shapes.student[self.student_keys()[0]]
        t_shape = shapes.teacher[self.teacher_keys()[0]]
        dim = self.cfg.feat_dim
        self.embed_s = _Embed(int(torch.Size(s_shape[1:]).numel()), dim)
        self.embed_t = _Embed(int(torch.Size(t_shape[1:]).numel()), dim)
        self.num_data = shapes.num_data
        self.labels = shapes.labels
        std = 1.0 / (dim / 3) ** 0.5
        gen = torch.Generator().manual_seed(0)
        for name in ("memory_s", "memory_t"):
            bank = torch.rand(self.num_data, dim, generator=gen) * 2 * std - std
            self.register_buffer(name, bank)
        self.register_buffer("z", torch.zeros(2))
        self.sampler = torch.Generator().manual_seed(1)

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"sampler": self.sampler.get_state()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.sampler.set_state(state["sampler"])

    def negatives(self, index: torch.Tensor) -> torch.Tensor:
        """len(index)×K indices of other images; same-class draws are redrawn (up to 20 times,
        which leaves about 1e-20 of them with 10 balanced classes)."""
        k = min(self.cfg.negatives, self.num_data - 1)
        # Uniform over the N-1 other images: draw from N-1 and skip the anchor's own position.
        neg = torch.randint(0, self.num_data - 1, (len(index), k), generator=self.sampler)
        neg = neg + (neg >= index[:, None]).long()
        if self.labels is None:
            return neg
        anchor = self.labels[index][:, None]
        for _ in range(20):
            clash = (self.labels[neg] == anchor) & (anchor >= 0)
            if not bool(clash.any()):
                break
            redraw = torch.randint(
                0, self.num_data - 1, (int(clash.sum()),), generator=self.sampler
            )
            rows = clash.nonzero()[:, 0]
            neg[clash] = redraw + (redraw >= index[rows]).long()
        return neg

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        assert teacher is not None
        ((s, t),) = self.features(student, teacher)
        v_s, v_t = self.embed_s(s), self.embed_t(t.detach())
        device = v_s.device
        index = batch.index.cpu()
        idx = torch.cat([index[:, None], self.negatives(index)], dim=1).to(device)
        index = index.to(device)
        tau = self.cfg.nce_temperature
        # The student anchor against the teacher memory, the teacher anchor against the student's.
        out_s = torch.exp(torch.bmm(self.memory_t[idx].detach(), v_s[:, :, None]).squeeze(2) / tau)
        out_t = torch.exp(torch.bmm(self.memory_s[idx].detach(), v_t[:, :, None]).squeeze(2) / tau)
        if bool((self.z == 0).any()):
            self.z.copy_(torch.stack([out_s.mean(), out_t.mean()]).detach() * self.num_data)
        loss = functional.crd_nce_loss(out_s / self.z[0], self.num_data) + functional.crd_nce_loss(
            out_t / self.z[1], self.num_data
        )
        if self.training:
            with torch.no_grad():
                m = self.cfg.momentum
                for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                    bank[index] = F.normalize(bank[index] * m + v.detach() * (1 - m), dim=1)
        return loss


@LOSSES.register("tf_kd")
class TeacherFreeKD(Loss):
    needs_teacher = False

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        labels = _labels(batch, student.logits.device)
        keep = labels >= 0
        if not bool(keep.any()):
            return student.logits.sum() * 0
        return functional.tf_kd_reg_loss(
            student.logits[keep], labels[keep], self.cfg.correct_prob, self.cfg.temperature
        )
