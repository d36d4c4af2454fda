"""`crd`: Tian et al. 2020, "Contrastive Representation Distillation"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from edgekd.distill.loss import LOSSES, Loss, RelationConfig, need

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgekd.data.datasets import Batch
    from edgekd.distill.terms import Outputs, Shapes


class CRDConfig(RelationConfig):
    """Tian et al. 2020, contrastive representation distillation with memory banks of
    negatives (NCE form)."""

    feat_dim: int = Field(128, gt=0, description="Dimension of the contrastive embedding.")
    negatives: int = Field(4096, gt=0, description="Negatives per positive (paper: 16384).")
    nce_temperature: float = Field(0.07, gt=0, description="Temperature τ of the critic.")
    momentum: float = Field(0.5, ge=0, lt=1, description="Memory-bank update momentum.")


def _embed(dim_in: int, dim_out: int) -> nn.Module:
    """CRD's critic head: flatten, linear to feat_dim, L2-normalise (the caller normalises)."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(dim_in, dim_out))


@LOSSES.register("crd")
class CRD(Loss):
    """Student and teacher embeddings, one memory bank of each over the whole training set;
    the student's anchor is contrasted with the teacher memory and vice versa. Negatives are
    other images drawn uniformly, from other classes when the anchor has a label (the authors'
    "exact" mode). Z is estimated on the first batch and kept (authors' code)."""

    Config = CRDConfig
    reads = "relation"
    max_teachers = 1  # one memory bank holds one teacher's embeddings
    embed_s: nn.Module
    embed_t: nn.Module
    memory_s: torch.Tensor
    memory_t: torch.Tensor
    z: torch.Tensor
    sampler: torch.Generator

    def setup(self, shapes: Shapes) -> None:
        import torch

        from edgekd.distill.terms import ShapeError

        if len(self.pairs) != 1:
            raise ShapeError(1, "crd contrasts one embedding pair; give exactly one pair")
        s_shape = shapes.student[self.student_keys()[0]]
        t_shape = shapes.teacher[self.teacher_keys()[0]]
        dim = self.cfg.feat_dim
        self.embed_s = _embed(int(torch.Size(s_shape[1:]).numel()), dim)
        self.embed_t = _embed(int(torch.Size(t_shape[1:]).numel()), dim)
        self.num_data = shapes.num_data
        self.labels = shapes.labels
        std = 1.0 / (dim / 3) ** 0.5
        gen = torch.Generator().manual_seed(0)
        for name in ("memory_s", "memory_t"):
            bank = torch.rand(self.num_data, dim, generator=gen) * 2 * std - std
            self.register_buffer(name, bank)
        self.register_buffer("z", torch.zeros(2))
        self.sampler = torch.Generator().manual_seed(1)

    def get_extra_state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.sampler.set_state(state["sampler"])

    def negatives(self, index: torch.Tensor) -> torch.Tensor:
        """len(index)×K indices of other images; same-class draws are redrawn (up to 20 times,
        which leaves about 1e-20 of them with 10 balanced classes)."""
        import torch

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
        import torch
        import torch.nn.functional as F

        from edgekd.distill.functional import crd_nce_loss

        ((s, t),) = self.features(student, need(teacher))
        v_s = F.normalize(self.embed_s(s), dim=1)
        v_t = F.normalize(self.embed_t(t.detach()), dim=1)
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
        loss = crd_nce_loss(out_s / self.z[0], self.num_data) + crd_nce_loss(
            out_t / self.z[1], self.num_data
        )
        if self.training:
            with torch.no_grad():
                m = self.cfg.momentum
                for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                    bank[index] = F.normalize(bank[index] * m + v.detach() * (1 - m), dim=1)
        return loss
