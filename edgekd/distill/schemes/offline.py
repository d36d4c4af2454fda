"""`offline`: the student learns from frozen teachers (their logits cached when possible)."""

from __future__ import annotations

from edgekd.config.schema import Strict
from edgekd.distill.scheme import Scheme, register


class OfflineConfig(Strict):
    """No settings: the loss is `distill.losses` alone."""


@register("offline")
class Offline(Scheme):
    Config = OfflineConfig
