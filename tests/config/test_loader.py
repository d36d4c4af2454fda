"""Config errors name file, line and key, and suggest the nearest valid key."""

import pytest

from edgekd.errors import ConfigError
from edgekd.pipeline import load_plan

GOOD = """\
name: t
data:
  train_subset: 100
stages:
  - stage: teacher
    model: {arch: tiny_cnn}
  - stage: student
    model: {arch: tiny_cnn, widths: [4]}
    train:
      epochs: 1
"""


def error_of(write_yaml, text: str) -> str:
    path = write_yaml(text)
    with pytest.raises(ConfigError) as exc:
        load_plan(path)
    return str(exc.value).replace(str(path), "FILE")


def test_good_pipeline_loads(write_yaml):
    plan = load_plan(write_yaml(GOOD))
    assert [s.name for s in plan.stages] == ["teacher", "student"]
    assert plan.stages[1].cfg.train.epochs == 1
    assert plan.losses[1][0] == "kd" and plan.losses[1][2].temperature == 4.0


def test_typo_names_line_key_and_suggestion(write_yaml):
    msg = error_of(write_yaml, GOOD.replace("      epochs: 1", "      epoch: 1"))
    assert msg.startswith("FILE:10: stages[1].train.epoch: unknown key")
    assert 'did you mean "epochs"?' in msg


def test_bad_value_names_line_and_bound(write_yaml):
    msg = error_of(write_yaml, GOOD.replace("epochs: 1", "epochs: 0"))
    assert msg == "FILE:10: stages[1].train.epochs: must be greater than 0"


def test_typo_at_top_level(write_yaml):
    msg = error_of(write_yaml, GOOD.replace("data:", "dat:"))
    assert msg.startswith("FILE:2: dat: unknown key")
    assert 'did you mean "data"?' in msg


def test_unknown_stage_suggests(write_yaml):
    msg = error_of(write_yaml, GOOD.replace("stage: student", "stage: studnet"))
    assert msg.startswith("FILE:7: stages[1].stage: unknown stage 'studnet';")
    assert 'did you mean "student"?' in msg


def test_unknown_model_setting(write_yaml):
    msg = error_of(write_yaml, GOOD.replace("widths: [4]", "width: [4]"))
    assert msg.startswith("FILE:8: stages[1].model.width: unknown key")
    assert 'did you mean "widths"?' in msg


def test_unknown_loss(write_yaml):
    text = GOOD + "distill:\n  losses:\n    - {name: kdd, weight: 1}\n"
    msg = error_of(write_yaml, text)
    assert msg.startswith("FILE:13: distill.losses[0].name: unknown loss 'kdd';")


def test_loss_parameter_is_validated(write_yaml):
    text = GOOD + "distill:\n  losses:\n    - {name: kd, temperature: -1}\n"
    msg = error_of(write_yaml, text)
    assert msg == "FILE:13: distill.losses[0].temperature: must be greater than 0"


def test_stage_order_is_checked_before_anything_runs(write_yaml):
    text = "name: t\nstages:\n  - stage: student\n    model: {arch: tiny_cnn}\n"
    msg = error_of(write_yaml, text)
    assert msg.startswith("FILE:3: stages[0].stage: stage 'student' needs teacher")


def test_duplicate_key_is_refused(write_yaml):
    msg = error_of(write_yaml, GOOD.replace("name: t\n", "name: t\nname: u\n"))
    assert msg.startswith("FILE:2: name: duplicate key")


def test_yaml_syntax_error_has_a_line(write_yaml):
    msg = error_of(write_yaml, GOOD.replace("  train_subset: 100", "  train_subset: [100"))
    assert msg.startswith("FILE:4: YAML syntax error") or msg.startswith("FILE:5: YAML syntax")


def test_python_tags_are_not_executed(write_yaml, tmp_path):
    marker = tmp_path / "pwned"
    text = f"name: !!python/object/apply:os.system ['touch {marker}']\nstages: []\n"
    with pytest.raises(ConfigError):
        load_plan(write_yaml(text))
    assert not marker.exists()


def test_missing_weights_file_says_where_it_looked(write_yaml):
    text = GOOD.replace(
        "model: {arch: tiny_cnn}\n",
        "model: {arch: tiny_cnn}\n    weights: nowhere.safetensors\n",
        1,
    )
    msg = error_of(write_yaml, text)
    assert msg.startswith("FILE:7: stages[0].weights: weights file 'nowhere.safetensors' not found")
    assert "weights: null" in msg


def test_prune_after_qat_needs_calibration(write_yaml):
    text = GOOD + "  - stage: qat\n  - stage: prune\n    ratio: 0.5\n"
    msg = error_of(write_yaml, text)
    assert msg.startswith("FILE:12: stages[3]: prune after qat re-quantizes")


def test_calibration_for_another_dataset_is_refused(write_yaml, tmp_path):
    cal = tmp_path / "cal.yaml"
    cal.write_text("name: c\ndataset: imagefolder\nsize: 10\n")
    text = GOOD + f"  - stage: qat\n    calibration: {cal}\n"
    with pytest.raises(ConfigError) as exc:
        load_plan(write_yaml(text))
    assert str(exc.value).startswith(f"{cal}:2: dataset: calibration set is for 'imagefolder'")


def test_shipped_pipelines_validate():
    for path in [
        "pipelines/mobilenet_jetson.yaml",
        "pipelines/mobilenet_prune_first.yaml",
        "pipelines/teacher_fmnist.yaml",
        "tests/data/smoke.yaml",
    ]:
        plan = load_plan(path)
        assert plan.stages, path
