"""Stage `export`: ONNX FP32/INT8 (QDQ) files, checked by onnx.checker and by parity on real
test images; a model that disagrees with PyTorch beyond tolerance fails the stage."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgekd.artifacts import Artifact, atomic_path, read_json
from edgekd.config.schema import Strict
from edgekd.contracts import ROLES, ExportedModel, ModelsIndex, Role
from edgekd.errors import ParityError
from edgekd.stage import STAGES, Stage, StageContext


class Tolerance(Strict):
    max_abs_diff: float = Field(gt=0, description="Largest |onnxruntime − PyTorch| logit gap.")
    top1_agreement: float = Field(gt=0, le=100, description="Least top-1 agreement, %.")


def _default_tolerances() -> dict[str, Tolerance]:
    # FP32: only float reordering separates the two runtimes. INT8: a logit can move by one
    # quantization step where rounding differs, so the gate is top-1 agreement on real images
    # (STYLE.md: INT8 top-1 agrees with FP32 on ≥ 99 % of real test images).
    return {
        "fp32": Tolerance(max_abs_diff=1e-3, top1_agreement=99.9),
        "int8": Tolerance(max_abs_diff=1.0, top1_agreement=99.0),
    }


class ExportConfig(Strict):
    parity_images: int = Field(1000, gt=0, description="Test images used for the parity check.")
    int8_weights: Literal["auto", "int8", "uint8"] = Field(
        "auto",
        description="Weight type of the rewritten INT8 file: uint8 (+128, zero point 128) keeps "
        "onnxruntime's uint8×int8 kernels from saturating on x86 CPUs without VNNI; auto: uint8 "
        "exactly when this CPU is one (export/qdq.py u8s8_saturates).",
    )

    def uint8_weights(self) -> bool:
        from edgekd.export.qdq import u8s8_saturates

        return self.int8_weights == "uint8" or (self.int8_weights == "auto" and u8s8_saturates())

    tolerance: dict[str, Tolerance] = Field(
        default_factory=_default_tolerances, description="Parity gate per precision."
    )


def require_parity(name: str, check: dict[str, Any], tol: Tolerance) -> None:
    """Fail the stage, with the numbers, when the exported model is outside tolerance."""
    if check["max_abs_diff"] > tol.max_abs_diff or check["top1_agreement"] < tol.top1_agreement:
        raise ParityError(
            f"{name}: onnxruntime disagrees with PyTorch on {check['images']} test images: "
            f"max |diff| {check['max_abs_diff']:.3g} (allowed {tol.max_abs_diff}), top-1 "
            f"agreement {check['top1_agreement']:.2f}% (required {tol.top1_agreement}%)"
        )


@STAGES.register("export")
class ExportStage(Stage):
    Config = ExportConfig
    requires = tuple(role.artifact for role in ROLES)
    produces = ("onnx",)
    uses = ("seed", "data")

    def run(self, ctx: StageContext, cfg: ExportConfig) -> dict[str, Artifact]:
        import numpy as np
        import torch

        from edgekd import training
        from edgekd.data.datasets import normalize, normalized_batches
        from edgekd.export.onnx import (
            export_onnx,
            onnx_logits,
            parity,
            store_int8_weights,
            torch_logits,
        )
        from edgekd.export.qdq import optimize_qdq
        from edgekd.models import zoo
        from edgekd.models.io import file_bytes, load_model
        from edgekd.quant import nncf_qat

        _, data = training.prepare(ctx.plan)
        example = torch.zeros(1, *data.input_shape)
        out = ctx.dir / "onnx"
        out.mkdir(exist_ok=True)
        roles = list(ROLES)
        if ctx.inputs["student"].sha256 == ctx.inputs["student_fp32"].sha256:
            roles.remove(Role.STUDENT_FP32)  # no qat/prune ran: the final model is the FP32 one
        index: list[ExportedModel] = []
        for role in roles:
            folder = ctx.input_path(role.artifact)
            meta = read_json(folder / "model.json")
            splits = training.for_model(data, meta)  # each model sees its own normalisation
            test_images = normalized_batches(splits.test, splits, 500)
            if meta.get("format") == "onnx":
                index.append(self._copy_onnx(ctx, role, folder, out, test_images, splits))
                continue
            model, meta = load_model(folder)
            precision = "int8" if meta.get("quantization") else "fp32"
            params = zoo.count_params(model)
            macs = zoo.count_macs(model, example)
            if precision == "int8":
                model = nncf_qat.strip(model, example)
            path = out / f"{role}_{precision}.onnx"
            check_images = normalize(splits.test.images[: cfg.parity_images], splits)
            expected = torch_logits(model, check_images)
            portable = None
            if precision == "int8":
                # Two files: NNCF's Q/DQ graph as exported, for TensorRT (which folds BatchNorm
                # and fuses Q/DQ itself, and takes only int8 zero-point-0 tensors), and the
                # same model rewritten so CPU runtimes run it on integer kernels (export/qdq.py).
                portable = out / f"{role}_{precision}_qdq.onnx"
                export_onnx(model, example, portable)
                store_int8_weights(portable)
                require_parity(
                    portable.name,
                    parity(portable, model, check_images, expected),
                    cfg.tolerance[precision],
                )
                rewrites = optimize_qdq(portable, path, cfg.uint8_weights())
                if rewrites["weights_uint8"]:
                    ctx.log(
                        "weights stored as uint8: onnxruntime's uint8×int8 kernels can saturate "
                        "on this CPU (no VNNI); set int8_weights: int8 for a VNNI target"
                    )
                ctx.metrics["qdq_rewrites"] = {k: v for k, v in rewrites.items() if v}
            else:
                export_onnx(model, example, path)
            check = parity(path, model, check_images, expected)
            # eager PyTorch outputs, kept as the reference the bench stage checks runtimes with
            reference = out / f"reference_{role}.npy"
            with atomic_path(reference) as tmp:
                np.save(tmp, expected)
            require_parity(path.name, check, cfg.tolerance[precision])
            accuracy, confusion = scored(torch.from_numpy(onnx_logits(path, test_images)), splits)
            entry = ExportedModel(
                role=role,
                file=path.name,
                precision=precision,
                params=params,
                macs=macs,
                bytes=file_bytes(path),
                test_acc=round(accuracy, 2),
                test_images=len(splits.test),
                parity=check,
                reference={"file": reference.name, "images": len(check_images)},
                file_tensorrt=portable.name if portable else None,
                preprocessing=splits.preprocessing(),
                confusion=confusion,
            )
            index.append(entry)
            ctx.metrics[f"{role}_{precision}_test_acc"] = entry.test_acc
            ctx.log(
                f"{path.name}: {entry.bytes / 1024:.0f} KiB, onnxruntime test accuracy "
                f"{accuracy:.2f}%, parity max |diff| {check['max_abs_diff']:.2e}, top-1 "
                f"agreement {check['top1_agreement']:.2f}%"
            )
        models = ModelsIndex(models=index, classes=data.classes)
        models.write(out)
        ctx.metrics["models"] = models.model_dump(mode="json")["models"]
        return {"onnx": ctx.artifact("onnx", out)}

    def _copy_onnx(
        self, ctx: StageContext, role: Role, source: Any, out: Any, test_images: Any, splits: Any
    ) -> ExportedModel:
        """A teacher given as ONNX is used as it is: copied, and scored with onnxruntime."""
        import shutil

        from edgekd.models.io import file_bytes
        from edgekd.training import onnx_predict

        path = out / f"{role}_fp32.onnx"
        shutil.copyfile(source / "model.onnx", path)
        accuracy, confusion = scored(onnx_predict(path, test_images), splits)
        meta = read_json(source / "model.json")
        entry = ExportedModel(
            role=role,
            file=path.name,
            precision="fp32",
            params=meta.get("params"),
            macs=None,
            bytes=file_bytes(path),
            test_acc=round(accuracy, 2),
            test_images=len(splits.test),
            parity=None,
            reference=None,  # the file is its own reference (checked with onnxruntime)
            preprocessing=splits.preprocessing(),
            confusion=confusion,
        )
        ctx.metrics[f"{role}_fp32_test_acc"] = entry.test_acc
        ctx.log(f"{path.name}: the given ONNX teacher, onnxruntime test accuracy {accuracy:.2f}%")
        return entry


def scored(logits: Any, splits: Any) -> tuple[float, list[list[int]]]:
    """Top-1 accuracy (%) of test-split `logits` and their confusion matrix (row = true class,
    column = predicted)."""
    import torch

    labels, classes = splits.test.labels, len(splits.classes)
    predicted = logits.argmax(1)
    matrix = torch.bincount(labels * classes + predicted, minlength=classes * classes)
    return float((predicted == labels).float().mean()) * 100, matrix.view(classes, classes).tolist()
