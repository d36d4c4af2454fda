"""One generic name → object registry for stages, losses, schemes, models and runners."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgekd.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, valid: list[str]) -> str:
    """' did you mean "x"?' when a close valid name exists, else ''."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f' did you mean "{close[0]}"?' if close else ""


class Registry(Generic[T]):
    """Maps names to objects; a name registers once, and an unknown name lists the valid ones.

    With `package`, the registry fills itself on first use by importing every module of that
    package (a plugin folder that holds only plugins): a new stage, loss, scheme or runner is
    one new file there, and no list of names is kept anywhere else. With `name_attr`, a
    registered class also gets its name as that attribute, so the name is written once.
    """

    def __init__(self, kind: str, package: str | None = None, name_attr: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.name_attr = name_attr
        self._items: dict[str, T] = {}
        self._loaded = package is None

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self.name_attr is not None:
                setattr(obj, self.name_attr, name)
            self._items[name] = obj
            return obj

        return add

    def load(self) -> None:
        """Import the plugin package's modules (once); each registers what it defines."""
        if self._loaded or self.package is None:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{info.name}")

    def get(self, name: str) -> T:
        self.load()
        try:
            return self._items[name]
        except KeyError:
            valid = sorted(self._items)
            raise UnknownNameError(
                f"unknown {self.kind} {name!r};{did_you_mean(name, valid)} "
                f"valid {self.kind} names: {', '.join(valid)}"
            ) from None

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
