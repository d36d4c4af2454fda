"""`dml`: Zhang et al. 2018, "Deep Mutual Learning": peers trained together, each teaching the
others."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from edgekd.config.schema import Strict
from edgekd.distill.scheme import Scheme, SchemeSetup, SchemeStep, register

if TYPE_CHECKING:
    import torch
    from torch import nn


class DMLConfig(Strict):
    """Zhang et al. 2018, Deep Mutual Learning: peers trained together, each teaching the others."""

    peers: int = Field(2, ge=2, le=8, description="Models trained together, the student included.")
    weight: float = Field(1.0, ge=0, description="Weight of each peer's mimicry term.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of the mimicry KL.")


@register("dml")
class DML(Scheme):
    Config = DMLConfig
    peers: nn.ModuleList
    peer_flips: bool

    def setup(self, setup: SchemeSetup) -> None:
        """Peers are re-initialised copies of a fresh student; copies of a trained one see
        their own random mirror images (when mirror images are allowed) so that they differ."""
        import copy

        import torch
        from torch import nn

        peers = []
        for i in range(1, self.cfg.peers):
            peer = copy.deepcopy(setup.student)
            if setup.fresh_student:
                with torch.random.fork_rng():
                    torch.manual_seed(1000 + i)
                    for module in peer.modules():
                        reset = getattr(module, "reset_parameters", None)
                        if callable(reset) and module is not peer:
                            reset()
            peers.append(peer)
        self.peers = nn.ModuleList(peers)
        self.peer_flips = setup.hflip and not setup.fresh_student

    def loss(self, step: SchemeStep) -> torch.Tensor:
        """Zhang et al. 2018, eq. (6)–(8): each peer minimises its own loss plus the mean KL from
        every other peer's (detached) prediction. Peers get the logit-level terms of
        `distill.losses`; feature terms stay with the student."""
        import torch

        from edgekd.distill.functional import kd_loss
        from edgekd.distill.terms import Outputs

        distiller, student, teachers, batch, images = (
            step.distiller, step.student, step.teachers, step.batch, step.images
        )  # fmt: skip
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
            for name, term in distiller.losses.items():
                if term.reads in ("labels", "response"):
                    value = distiller.term_value(term, out, teachers, batch)
                    total = total + distiller.weights[name] * value
            outputs.append(logits)
        for i, logits in enumerate(outputs):
            others = [o.detach() for j, o in enumerate(outputs) if j != i]
            mimic = sum(kd_loss(logits, o, self.cfg.temperature) for o in others)
            total = total + self.cfg.weight * mimic / len(others)
        return total
