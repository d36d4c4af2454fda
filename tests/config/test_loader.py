"""Config errors name file, line and key, and suggest the nearest valid key."""

import re

import pytest

from edgekd.errors import ConfigError
from edgekd.pipeline import load_plan
from tests.conftest import ROOT

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


IMAGENET = "pipelines/resnet50_to_mobilenetv2_imagenet.yaml"  # needs the user's data and weights


def test_shipped_pipelines_validate():
    shipped = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "pipelines").glob("*.yaml"))
    assert "pipelines/mobilenet_search.yaml" in shipped and IMAGENET in shipped
    for path in [*shipped, "tests/data/smoke.yaml"]:
        if path == IMAGENET:
            continue
        plan = load_plan(path)
        assert plan.stages, path


def test_the_imagenet_pipeline_says_which_weights_it_needs():
    # Its teacher's weights are not shipped (the user saves torchvision's, as its comment says);
    # tests/test_imagenet_pipeline.py runs it on a generated tree with generated weights.
    expected = re.escape("weights file 'weights/resnet50_imagenet1k_v2.pt' not found")
    with pytest.raises(ConfigError, match=expected):
        load_plan(IMAGENET)


def test_a_loss_listed_twice_is_refused_with_the_second_line(write_yaml):
    text = GOOD.replace(
        "stages:\n",
        "distill:\n  losses:\n    - {name: kd, weight: 1}\n    - {name: ce}\n"
        "    - {name: kd, weight: 0.5}\nstages:\n",
    )
    msg = error_of(write_yaml, text)
    assert msg.startswith("FILE:8: distill.losses[2].name: the loss 'kd' is listed twice")
    assert "first at line 6" in msg


def test_a_stage_takes_its_own_training_defaults_for_keys_not_given(write_yaml):
    plan = load_plan(write_yaml(GOOD))
    student = plan.stages[1].cfg.train
    assert (student.epochs, student.lr) == (1, 0.1)  # only epochs given: lr is the student's
    teacher = plan.stages[0].cfg.train
    assert (teacher.epochs, teacher.lr) == (8, 0.2)


def test_a_profile_runtime_must_be_a_registered_runner(tmp_path, write_yaml):
    profile = tmp_path / "board.yaml"
    profile.write_text(
        "name: board\nkind: local-cpu\nruntimes:\n  - onnxruntime\n  - openvno\n"
        "precisions: [fp32]\n"
    )
    msg = error_of(write_yaml, GOOD.replace("stages:\n", f"targets: [{profile}]\nstages:\n"))
    assert msg.startswith(f"{profile}:5: runtimes[1]: ")
    assert "unknown runner 'openvno'" in msg and 'did you mean "openvino"?' in msg


def test_validate_show_prints_every_default_as_yaml_that_loads_back(write_yaml, capsys):
    import yaml

    from edgekd.cli import main
    from edgekd.models.specs import MODEL_CONFIGS

    path = write_yaml(GOOD)
    assert main(["validate", "--show", str(path)]) == 0
    text = capsys.readouterr().out
    assert "lr: 0.1" in text and "# Peak learning rate (SGD with Nesterov momentum)." in text
    shown = yaml.safe_load(text)
    assert shown["stages"][1]["train"]["lr"] == 0.1 and shown["stages"][0]["train"]["epochs"] == 8
    assert shown["stages"][1]["model"] == {"arch": "tiny_cnn", "widths": [4]}
    assert shown["distill"]["losses"][1] == {"name": "kd", "weight": 0.9, "temperature": 4.0}
    # The shown pipeline is the same pipeline (architectures with their defaults written out).
    again = load_plan(write_yaml(text, "shown.yaml"))
    original = load_plan(path)
    for a, b in zip(again.stages, original.stages, strict=True):
        assert a.cfg.model_copy(update={"model": None}) == b.cfg.model_copy(update={"model": None})
        arch = MODEL_CONFIGS.get(b.cfg.model.arch)
        assert arch.model_validate(a.cfg.model.arch_kwargs()) == arch.model_validate(
            b.cfg.model.arch_kwargs()
        )
    assert again.losses == original.losses
    assert (again.scheme, again.scheme_cfg) == (original.scheme, original.scheme_cfg)
    rest = {"stages": True, "distill": {"losses", "scheme"}}
    assert again.config.model_dump(exclude=rest) == original.config.model_dump(exclude=rest)
