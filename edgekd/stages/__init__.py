"""Thin stage modules; importing this package registers every stage (torch is not imported)."""

from edgekd.stages import bench, export, prune, qat, report, student, teacher  # noqa: F401
from edgekd.stages.base import STAGES, Stage, StageContext

__all__ = ["STAGES", "Stage", "StageContext"]
