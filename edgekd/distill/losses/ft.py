"""`ft`: Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor
Transfer"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.distill.loss import LOSSES, Loss, PairedConfig, need

if TYPE_CHECKING:
    from collections.abc import Iterable

    import torch
    from torch import nn

    from edgekd.data.datasets import Batch
    from edgekd.distill.terms import Outputs, Shapes


class FTConfig(PairedConfig):
    """Kim et al. 2018, factor transfer: a paraphraser auto-encoder is first trained on the
    teacher's features; the student's translator matches its factors (L1 of normalised
    factors)."""

    rate: float = Field(0.5, gt=0, le=4, description="Paraphraser rate k: factor channels / C.")
    paraphraser_epochs: float = Field(
        1.0, gt=0, description="Passes over the training data to train the paraphraser."
    )
    paraphraser_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the paraphraser.")


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    from torch import nn

    return [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]


@LOSSES.register("ft")
class FactorTransfer(Loss):
    """Paraphraser: 3 conv layers C → k·C (encoder) and back (decoder), trained to reconstruct
    the teacher's features; translator: 3 conv layers on the student, C_s → k·C."""

    Config = FTConfig
    reads = "feature"
    pretrains = True
    encoders: nn.ModuleList
    decoders: nn.ModuleList
    translators: nn.ModuleList
    paraphraser_ready: torch.Tensor

    def pretrain_epochs(self) -> float:
        return float(self.cfg.paraphraser_epochs)

    def setup(self, shapes: Shapes) -> None:
        import torch
        from torch import nn

        from edgekd.distill.terms import ShapeError

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
        import torch
        import torch.nn.functional as F

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
        import torch

        from edgekd.distill.functional import ft_loss
        from edgekd.distill.terms import match_spatial

        self.encoders.eval()
        total = student.logits.new_zeros(())
        features = self.features(student, need(teacher))
        for translate, encode, (s, t) in zip(
            self.translators, self.encoders, features, strict=True
        ):
            with torch.no_grad():
                factor_t = encode(t)
            factor_s, factor_t = match_spatial(translate(s), factor_t)
            total = total + ft_loss(factor_s, factor_t)
        return total
