"""Caching, resume and run-folder safety, with two small registered test stages."""

import io
from pathlib import Path

import pytest
from pydantic import Field
from rich.console import Console

from edgekd import pipeline
from edgekd.config.schema import PathStr, Strict
from edgekd.errors import ConfigError, RunDirError
from edgekd.stage import STAGES, Stage, StageContext
from tests.conftest import ROOT

RUNS: list[str] = []


class MakeConfig(Strict):
    value: int = Field(1, description="what to write")
    fail: bool = Field(False, description="raise mid-way, like a killed process")


@STAGES.register("test_make")
class MakeStage(Stage):
    Config = MakeConfig
    produces = ("thing",)
    uses = ()

    def run(self, ctx: StageContext, cfg: MakeConfig):
        RUNS.append(f"make{cfg.value}")
        (ctx.dir / "partial").write_text("started")
        if cfg.fail:
            raise KeyboardInterrupt
        path = ctx.dir / "thing.txt"
        path.write_text(str(cfg.value))
        return {"thing": ctx.artifact("thing", path)}


@STAGES.register("test_use")
class UseStage(Stage):
    Config = Strict
    requires = ("thing",)
    produces = ("used",)
    uses = ()

    def run(self, ctx: StageContext, cfg: Strict):
        RUNS.append("use")
        path = ctx.dir / "used.txt"
        path.write_text(ctx.input_path("thing").read_text() * 2)
        return {"used": ctx.artifact("used", path)}


def make_plan(tmp_path: Path, value: int = 1, fail: bool = False, name: str = "p"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: t\nstages:\n  - stage: test_make\n    value: {value}\n"
        f"    fail: {str(fail).lower()}\n  - stage: test_use\n"
    )
    return pipeline.load_plan(path)


@pytest.fixture(autouse=True)
def _clear():
    RUNS.clear()


def test_rerun_skips_unchanged_stages(tmp_path):
    out = tmp_path / "runs"
    pipeline.run(make_plan(tmp_path), out=out)
    pipeline.run(make_plan(tmp_path), out=out)
    assert RUNS == ["make1", "use"]
    assert (out / "t" / "01_test_use" / "used.txt").read_text() == "11"


def test_changed_config_reruns_downstream_and_keeps_the_old_result(tmp_path):
    out = tmp_path / "runs"
    pipeline.run(make_plan(tmp_path), out=out)
    pipeline.run(make_plan(tmp_path, value=2), out=out)
    assert RUNS == ["make1", "use", "make2", "use"]
    assert (out / "t" / "01_test_use" / "used.txt").read_text() == "22"
    kept = sorted(p.name for p in (out / "t" / ".previous").iterdir())
    assert [k.split("-")[0] for k in kept] == ["00_test_make", "01_test_use"]


def test_from_forces_a_rerun(tmp_path):
    out = tmp_path / "runs"
    pipeline.run(make_plan(tmp_path), out=out)
    pipeline.run(make_plan(tmp_path), out=out, from_stage="test_use")
    assert RUNS == ["make1", "use", "use"]


def test_edited_output_is_detected_and_rebuilt(tmp_path):
    out = tmp_path / "runs"
    pipeline.run(make_plan(tmp_path), out=out)
    (out / "t" / "00_test_make" / "thing.txt").write_text("tampered")
    pipeline.run(make_plan(tmp_path), out=out)
    # The rebuilt output has the original bytes again, so the next stage stays cached.
    assert RUNS == ["make1", "use", "make1"]
    assert (out / "t" / "00_test_make" / "thing.txt").read_text() == "1"


def test_interrupted_stage_continues_on_the_next_run(tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(make_plan(tmp_path, fail=True), out=out)
    manifest = (out / "t" / "00_test_make" / "manifest.json").read_text()
    assert '"status": "running"' in manifest
    pipeline.run(make_plan(tmp_path), out=out)
    assert RUNS == ["make1", "make1", "use"]


def test_run_folder_of_another_pipeline_is_refused(tmp_path):
    out = tmp_path / "runs"
    pipeline.run(make_plan(tmp_path, name="first"), out=out)
    with pytest.raises(RunDirError, match="Nothing was changed"):
        pipeline.run(make_plan(tmp_path, name="second"), out=out)
    assert RUNS == ["make1", "use"]


# --- a cached stage is never stale: keys hash what the stage reads --------------------------


class ReadConfig(Strict):
    source: PathStr = Field(description="a file or folder the stage reads")


@STAGES.register("test_read")
class ReadStage(Stage):
    Config = ReadConfig
    produces = ("read",)
    uses = ("data",)

    def run(self, ctx: StageContext, cfg: ReadConfig):
        RUNS.append("read")
        path = ctx.dir / "read.txt"
        path.write_text("read")
        return {"read": ctx.artifact("read", path)}


def run_quietly(plan, out):
    console = Console(file=io.StringIO(), width=200)
    pipeline.run(plan, out=out, console=console)
    return console.file.getvalue()


def test_a_file_edited_in_place_reruns_the_stage_and_says_why(tmp_path):
    source = tmp_path / "calibration.yaml"
    source.write_text("size: 1\n")
    yaml_path = tmp_path / "p.yaml"
    yaml_path.write_text(f"name: t\nstages:\n  - stage: test_read\n    source: {source}\n")
    out = tmp_path / "runs"
    run_quietly(pipeline.load_plan(yaml_path), out)
    assert "unchanged" in run_quietly(pipeline.load_plan(yaml_path), out)
    source.write_text("size: 2\n")  # same path, new content
    log = run_quietly(pipeline.load_plan(yaml_path), out)
    assert RUNS == ["read", "read"]
    assert "00_test_read: file stages[0].source changed; previous result moved" in log


def test_images_added_to_the_data_folder_rerun_the_stages_that_use_data(tmp_path):
    tree = tmp_path / "images" / "train" / "cat"
    tree.mkdir(parents=True)
    (tree / "0.png").write_bytes(b"png")
    source = tmp_path / "s.txt"
    source.write_text("s")
    yaml_path = tmp_path / "p.yaml"
    yaml_path.write_text(
        f"name: t\ndata: {{dataset: imagefolder, root: {tmp_path / 'images'}}}\n"
        f"stages:\n  - stage: test_read\n    source: {source}\n"
    )
    out = tmp_path / "runs"
    run_quietly(pipeline.load_plan(yaml_path), out)
    (tree / "1.png").write_bytes(b"png")
    log = run_quietly(pipeline.load_plan(yaml_path), out)
    assert RUNS == ["read", "read"] and "file data.root changed" in log


def test_keys_of_the_real_stages_hash_the_files_they_name(tmp_path):
    """The teacher's weights, the calibration file, extra teachers, unlabeled images and the
    target profiles: editing each changes the key of exactly the stages that read it."""
    import shutil

    from edgekd.artifacts import sha256_json

    weights = tmp_path / "teacher.safetensors"
    weights.write_bytes(b"weights v1")
    extra = tmp_path / "extra.onnx"
    extra.write_bytes(b"onnx v1")
    calibration = tmp_path / "cal.yaml"
    shutil.copyfile(ROOT / "calibration" / "fashion-mnist-train-256.yaml", calibration)
    target = tmp_path / "cpu.yaml"
    shutil.copyfile(ROOT / "targets" / "cpu-x86.yaml", target)
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    yaml_path = tmp_path / "p.yaml"
    yaml_path.write_text(f"""name: keys
targets: [{target}]
distill:
  losses: [{{name: ce}}, {{name: kd}}]
  teachers: [{{onnx: {extra}}}]
  unlabeled: {{source: {unlabeled}}}
stages:
  - {{stage: teacher, model: {{arch: tiny_cnn}}, weights: {weights}}}
  - {{stage: student, model: {{arch: tiny_cnn}}}}
  - {{stage: qat, calibration: {calibration}}}
  - {{stage: export}}
  - {{stage: bench}}
""")

    def keys():
        plan = pipeline.load_plan(yaml_path)
        return {s.name: sha256_json(pipeline.key_parts(plan, s, {})) for s in plan.stages}

    base = keys()
    edits = {
        weights: {"teacher"},
        extra: {"student", "qat"},
        calibration: {"qat"},
        unlabeled / "new.png": {"student", "qat"},
        target: {"bench"},
    }
    for path, expected in edits.items():
        path.write_bytes(path.read_bytes() + b"\n# edited" if path.exists() else b"png")
        now = keys()
        assert {name for name in base if now[name] != base[name]} == expected, path
        base = now


# --- optional inputs: a stage takes an artifact when an earlier stage produced it ----------


@STAGES.register("test_arch")
class ArchStage(Stage):
    """Stands in for a search: chooses the student's architecture."""

    Config = MakeConfig
    produces = ("architecture",)
    uses = ()

    def run(self, ctx: StageContext, cfg: MakeConfig):
        from edgekd.contracts import Architecture

        widths = [4, 4 * cfg.value]
        Architecture(model={"arch": "tiny_cnn", "widths": widths}, source="test_arch").write(
            ctx.dir
        )
        return {"architecture": ctx.artifact("architecture", ctx.dir)}


def tiny_teacher(tmp_path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from edgekd.models import zoo
    from edgekd.models.specs import ModelSpec

    torch.manual_seed(0)
    model = zoo.build(ModelSpec(arch="tiny_cnn"), 1, 10)
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_the_student_takes_the_architecture_an_earlier_stage_chose(tmp_path):
    import json

    weights = tiny_teacher(tmp_path)
    head = (
        "name: arch\ndevice: cpu\n"
        "data: {dataset: fashion-mnist, train_subset: 200, val_size: 100, test_subset: 100}\n"
        f"stages:\n  - {{stage: teacher, model: {{arch: tiny_cnn}}, weights: {weights}}}\n"
    )
    student = "  - {stage: student, train: {epochs: 0.5, batch_size: 50}}\n"
    with pytest.raises(ConfigError, match="the student needs `model:`"):
        pipeline.load_plan(write(tmp_path, head + student))
    path = write(tmp_path, head + "  - {stage: test_arch, value: 2}\n" + student)
    out = tmp_path / "runs"
    run_quietly(pipeline.load_plan(path), out)
    meta = json.loads((out / "arch" / "02_student" / "student" / "model.json").read_text())
    assert meta["spec"] == {"arch": "tiny_cnn", "widths": [4, 8]}
    # another architecture is another input: the student reruns, and says why
    path = write(tmp_path, head + "  - {stage: test_arch, value: 3}\n" + student)
    log = run_quietly(pipeline.load_plan(path), out)
    assert "02_student: input architecture changed" in log
    meta = json.loads((out / "arch" / "02_student" / "student" / "model.json").read_text())
    assert meta["spec"]["widths"] == [4, 12]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path
