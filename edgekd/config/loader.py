"""Safe YAML loading that remembers the line of every key, so errors read `file:line: key: why`."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from edgekd.errors import ConfigError

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass
class Document:
    """A parsed YAML file: plain data plus the 1-based line of every mapping key and list item."""

    path: Path
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line(self, loc: Loc) -> int:
        """The line of the deepest known prefix of `loc` (a missing key points at its parent)."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1

    def error(self, loc: Loc, message: str) -> ConfigError:
        return ConfigError(f"{self.path}:{self.line(loc)}: {format_loc(loc)}: {message}")


def format_loc(loc: Loc) -> str:
    """('stages', 2, 'epochs') → 'stages[2].epochs'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_yaml(path: str | Path) -> Document:
    """Parse `path` with the safe loader (no Python tags), refusing duplicate keys."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{path}:1: the file is empty")
        doc = Document(path, loader.construct_document(node))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"{path}:{line}: YAML syntax error: {exc.problem or exc}") from None
    finally:
        loader.dispose()
    _record_lines(doc, node, ())
    return doc


def _record_lines(doc: Document, node: yaml.Node, loc: Loc) -> None:
    doc.lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise ConfigError(
                    f"{doc.path}:{key_node.start_mark.line + 1}: {format_loc((*loc, key))}: "
                    "duplicate key (YAML would silently keep only the last one)"
                )
            seen.add(key)
            doc.lines[(*loc, key)] = key_node.start_mark.line + 1
            _record_lines(doc, value_node, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(doc, item, (*loc, i))


def validate(model: type[M], data: Any, doc: Document, loc: Loc = ()) -> M:
    """Build `model` from `data` (found at `loc` in `doc`); the first error names its line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # A misspelt key also shows up as a missing one; report the misspelling first.
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        err_loc: Loc = (*loc, *(p for p in err["loc"] if isinstance(p, str | int)))
        raise doc.error(err_loc, _message(model, err, data)) from None


def _message(model: type[BaseModel], err: Any, data: Any) -> str:
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        parent = _model_at(model, err["loc"][:-1], data)
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        return f"unknown key{hint} valid keys: {', '.join(valid)}"
    if err["type"] == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    for prefix, repl in (("Input should be", "must be"), ("Value error, ", "")):
        msg = msg.replace(prefix, repl)
    return msg


def _model_at(model: type[BaseModel], loc: Any, data: Any) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (for did-you-mean on unknown keys); of a
    union of models (a search space's families), the one whose literal tag the data give."""
    current: Any = model
    for part in loc:
        if isinstance(data, list | dict):
            try:
                data = data[part]
            except (IndexError, KeyError, TypeError):
                data = None
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return None
        models = _inner_models(fields[part].annotation)
        current = next((m for m in models if _tagged(m, data)), models[0] if models else None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner_models(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel subclasses inside Optional[...] / list[...] / union annotations."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _inner_models(arg)]


def _tagged(model: type[BaseModel], data: Any) -> bool:
    """Whether `data` carries the value of one of `model`'s Literal fields (or its default)."""
    if not isinstance(data, dict):
        return False
    return any(
        get_origin(info.annotation) is Literal
        and data.get(name, info.default) in get_args(info.annotation)
        for name, info in model.model_fields.items()
    )
