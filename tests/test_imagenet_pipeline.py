"""The shipped real-size pipeline, end to end on a generated ImageNet-layout tree: streamed
data, ImageNet transforms, a torchvision ResNet-50 teacher from a weights file, a MobileNetV2
student (bf16 autocast), QAT, pruning, export and bench. Only the sizes are shrunk (32 px,
two classes of four images, one short epoch each) so that it runs in the suite."""

from __future__ import annotations

import json

import numpy as np
import torch
import yaml

from edgekd import pipeline
from tests.conftest import ROOT

SHIPPED = ROOT / "pipelines" / "resnet50_to_mobilenetv2_imagenet.yaml"


def _tree(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for c in range(2):
            folder = root / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = (int(v) for v in rng.integers(72, 110, 2))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., c] = 255 - pixels[..., c] // 4  # each class has its bright channel
                Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)


def test_the_imagenet_pipeline_runs_on_a_small_tree(tmp_path):
    import torchvision

    _tree(tmp_path / "imagenet")
    weights = tmp_path / "resnet50.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50(num_classes=2).state_dict(), weights)
    calibration = tmp_path / "cal.yaml"
    calibration.write_text("name: c\ndataset: imagefolder\nsize: 8\nbatch_size: 4\n")
    doc = yaml.safe_load(SHIPPED.read_text())
    doc["data"] |= {"root": str(tmp_path / "imagenet"), "image_size": 32, "storage": "stream"}
    doc["data"]["workers"] = 2
    doc["targets"] = ["targets/cpu-x86.yaml"]
    stages = {s["stage"]: s for s in doc["stages"]}
    stages["teacher"]["weights"] = str(weights)
    for name in ("student", "qat", "prune"):
        stages[name]["train"] |= {"epochs": 1, "batch_size": 4, "lr": 0.01}
    for name in ("qat", "prune"):
        stages[name]["calibration"] = str(calibration)
        stages[name]["timing"] = (
            None  # the ladder's and the pruning check's timing: tested elsewhere
        )
    stages["export"] |= {
        "parity_images": 4,  # untrained models: near-tied logits, so a loose INT8 gate
        "tolerance": {
            "fp32": {"max_abs_diff": 1e-3, "top1_agreement": 99.9},
            "int8": {"max_abs_diff": 10.0, "top1_agreement": 1},
        },
    }
    stages["bench"] |= {"warmup": 2, "iterations": 10, "min_seconds": 0, "rounds": 1}
    path = tmp_path / "imagenet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    result = pipeline.run(pipeline.load_plan(path), out=tmp_path / "runs")
    assert [s["status"] for s in result["stages"]] == ["ran"] * 7
    run = tmp_path / "runs" / "resnet50_to_mobilenetv2_imagenet"
    teacher = json.loads((run / "00_teacher" / "teacher" / "model.json").read_text())
    assert teacher["spec"]["arch"] == "torchvision" and teacher["spec"]["name"] == "resnet50"
    assert teacher["input_shape"] == [3, 32, 32]
    assert teacher["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert not list(run.glob("cache/*.npy"))  # random resized crops: the teacher ran live
    models = json.loads((run / "04_export" / "onnx" / "models.json").read_text())["models"]
    assert {m["role"] for m in models} >= {"teacher", "final"}
    report = json.loads((run / "report.json").read_text())
    assert report["summary"]["final"]["params"] < report["summary"]["teacher"]["params"] / 10
