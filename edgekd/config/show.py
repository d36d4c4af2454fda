"""`edgekd validate --show`: the fully resolved pipeline (every stage, every default filled in)
as YAML, each key followed by its field's description, so a user sees what will run.

The text is YAML that loads back to the same values; comments are added beside the keys,
which no YAML writer does, hence the small walk here (values go through yaml.safe_dump).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

from edgekd.config.schema import LossTerm
from edgekd.models.specs import MODEL_CONFIGS, ModelSpec

if TYPE_CHECKING:
    from edgekd.plan import Plan

COMMENT_COLUMN = 44


def _scalar(value: Any) -> str:
    """A value as one line of YAML flow style."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _description(model: BaseModel, name: str) -> str:
    info = type(model).model_fields.get(name)
    return (info.description or "") if info is not None else ""


def _emit(out: list[tuple[str, str]], prefix: str, key: str, value: Any, note: str) -> None:
    """One key: a nested model becomes a block, anything else one flow-style line."""
    if isinstance(value, ModelSpec):  # the architecture's own settings, defaults included
        out.append((f"{prefix}{key}:", note))
        out.append((f"{prefix}  arch: {value.arch}", _description(value, "arch")))
        _model(
            out, MODEL_CONFIGS.get(value.arch).model_validate(value.arch_kwargs()), prefix + "  "
        )
    elif isinstance(value, BaseModel) and type(value).model_fields:
        out.append((f"{prefix}{key}:", note))
        _model(out, value, prefix + "  ")
    elif isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        out.append((f"{prefix}{key}:", note))
        for item in value:
            _item(out, prefix + "  ", item.model_dump(mode="json"), item)
    elif isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
        out.append((f"{prefix}{key}:", note))
        for name, item in value.items():
            _emit(out, prefix + "  ", str(name), item, "")
    else:
        dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        out.append((f"{prefix}{key}: {_scalar(dumped)}", note))


def _model(out: list[tuple[str, str]], model: BaseModel, prefix: str, skip: tuple = ()) -> None:
    for name in type(model).model_fields:
        if name not in skip:
            _emit(out, prefix, name, getattr(model, name), _description(model, name))
    for name, value in (model.model_extra or {}).items():
        _emit(out, prefix, name, value, "")


def _item(
    out: list[tuple[str, str]], prefix: str, head: dict[str, Any], model: BaseModel | None
) -> None:
    """A list item: the keys of `head` first (the first one after the dash), then `model`."""
    first = True
    for key, value in head.items():
        dash = "- " if first else "  "
        note = _description(model, key) if model is not None else ""
        if isinstance(model, BaseModel) and key in type(model).model_fields:
            _emit(out, prefix + dash, key, getattr(model, key), note)
        else:
            out.append((f"{prefix}{dash}{key}: {_scalar(value)}", note))
        first = False


def render(plan: Plan) -> str:
    """The resolved pipeline of `plan` as commented YAML."""
    out: list[tuple[str, str]] = [(f"# {plan.path}, every default filled in", "")]
    config = plan.config
    skip = ("distill", "stages")
    _model(out, config, "", skip=skip)
    out.append(("distill:", _description(config, "distill")))
    distill = config.distill
    out.append(("  losses:", _description(distill, "losses")))
    for name, weight, cfg in plan.losses:
        term = LossTerm(name=name, weight=weight)
        _item(out, "    ", {"name": name, "weight": weight}, term)
        _model(out, cfg, "      ")
    out.append(("  scheme:", _description(distill, "scheme")))
    out.append((f"    name: {plan.scheme}", ""))
    if plan.scheme_cfg is not None:
        _model(out, plan.scheme_cfg, "    ")
    _model(out, distill, "  ", skip=("losses", "scheme"))
    out.append(("stages:", _description(config, "stages")))
    for spec in plan.stages:
        doc = sys.modules[type(spec.stage).__module__].__doc__ or ""
        out.append((f"  - stage: {spec.name}", doc.split("\n")[0]))
        _model(out, spec.cfg, "    ")
    lines = [f"{text:<{COMMENT_COLUMN - 2}}  # {note}" if note else text for text, note in out]
    return "\n".join(lines) + "\n"
