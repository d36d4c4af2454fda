"""The vocabulary stages exchange: model roles, the export index (models.json) and the
architecture a search hands to the student. Written by one stage, read by others through the
same classes, so a field is named once."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from edgekd.artifacts import read_json, write_json


class Role(StrEnum):
    """The models a run compares: the teacher, the student before compression, the result."""

    TEACHER = "teacher"
    STUDENT_FP32 = "student_fp32"
    FINAL = "final"

    @property
    def artifact(self) -> str:
        """The artifact that holds this role's model folder (the last `student` is final)."""
        return ARTIFACT_OF[self]


ARTIFACT_OF = {Role.TEACHER: "teacher", Role.STUDENT_FP32: "student_fp32", Role.FINAL: "student"}
ROLES = tuple(Role)


class Record(BaseModel):
    """Base of the files stages exchange: unknown keys are kept, so that an older edgekd can
    still read what a newer one wrote."""

    model_config = ConfigDict(extra="allow")


class ParityCheck(Record):
    images: int
    max_abs_diff: float
    top1_agreement: float


class ReferenceFile(Record):
    file: str = Field(description="Eager PyTorch logits on the first `images` test images.")
    images: int


class ExportedModel(Record):
    """One exported ONNX file and what the export stage measured of it."""

    role: Role
    file: str
    precision: str
    params: int | None
    macs: int | None
    bytes: int
    test_acc: float
    test_images: int
    parity: ParityCheck | None = None  # None: an ONNX file given as it is (its own reference)
    reference: ReferenceFile | None = None
    file_tensorrt: str | None = Field(None, description="NNCF's Q/DQ file, for TensorRT.")
    preprocessing: dict[str, Any] = Field(description="What the model does to a uint8 image.")
    confusion: list[list[int]] | None = Field(
        None,
        description="Test-split confusion matrix in onnxruntime: row = true class, column = "
        "predicted class, in the order of ModelsIndex.classes.",
    )


class ModelsIndex(Record):
    """`onnx/models.json`, written by the export stage."""

    models: list[ExportedModel]
    classes: list[str]

    FILE: ClassVar[str] = "models.json"

    def get(self, role: Role) -> ExportedModel | None:
        return next((m for m in self.models if m.role == role), None)

    def write(self, folder: Path) -> None:
        write_json(folder / self.FILE, self.model_dump(mode="json"))

    @classmethod
    def read(cls, folder: Path) -> ModelsIndex:
        return cls.model_validate(read_json(folder / cls.FILE))


class Architecture(Record):
    """`architecture.json`: the student a search stage chose, taken by the student stage."""

    model: dict[str, Any] = Field(description="The ModelSpec: `arch` and its settings.")
    source: str = Field("", description="Which stage chose it and how, for the report.")
    init: str | None = Field(
        None,
        description="A model folder, beside this file, with the weights the student starts "
        "from (cut from the teacher); null: random initialisation.",
    )
    normalize: dict[str, list[float]] | None = Field(
        None,
        description="The mean and std those weights expect (the teacher's); the student stage "
        "uses them unless its own `normalize:` is set.",
    )

    FILE: ClassVar[str] = "architecture.json"

    def write(self, folder: Path) -> None:
        write_json(folder / self.FILE, self.model_dump(mode="json"))

    @classmethod
    def read(cls, folder: Path) -> Architecture:
        return cls.model_validate(read_json(folder / cls.FILE))
