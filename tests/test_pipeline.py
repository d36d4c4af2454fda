"""Caching, resume and run-folder safety, with two small registered test stages."""

from pathlib import Path

import pytest
from pydantic import Field

from edgekd import pipeline
from edgekd.config.schema import Strict
from edgekd.errors import RunDirError
from edgekd.stages.base import STAGES, Stage, StageContext

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
