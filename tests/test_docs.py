"""The YAML snippets in docs/distillation.md and docs/data.md are valid configs (the docs stay
true)."""

import re
import textwrap

import pytest
import yaml

from edgekd.config.schema import DistillConfig
from edgekd.distill.loss import LOSSES
from edgekd.distill.scheme import SCHEMES
from edgekd.stage import STAGES
from tests.conftest import ROOT

DOC = ROOT / "docs" / "distillation.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_guide_has_snippets():
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("text", BLOCKS, ids=range(len(BLOCKS)))
def test_every_snippet_validates(text):
    doc = yaml.safe_load(textwrap.dedent(text)) or {}
    if isinstance(doc, dict) and "distill" in doc:
        cfg = DistillConfig.model_validate(doc["distill"])
        for term in cfg.losses:
            LOSSES.get(term.name).Config.model_validate(term.model_extra or {})
        scheme = {"name": cfg.scheme} if isinstance(cfg.scheme, str) else dict(cfg.scheme)
        SCHEMES.get(str(scheme.pop("name"))).Config.model_validate(scheme)
    elif isinstance(doc, list):
        for stage in doc:
            params = dict(stage)
            STAGES.get(params.pop("stage")).Config.model_validate(params)
    else:
        pytest.fail(f"snippet is neither a distill section nor a stage list:\n{text}")


def test_the_data_guide_snippet_is_a_valid_data_section():
    from edgekd.config.schema import DataConfig

    (block,) = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "data.md").read_text(), re.S)
    cfg = DataConfig.model_validate(yaml.safe_load(block)["data"])
    assert cfg.storage == "auto" and cfg.resize == "center_crop"
    assert cfg.augment.random_resized_crop == (0.08, 1.0)
