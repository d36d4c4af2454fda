"""One generic name → object registry for stages, losses, models and runners."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgekd.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, valid: list[str]) -> str:
    """' did you mean "x"?' when a close valid name exists, else ''."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return f' did you mean "{close[0]}"?' if close else ""


class Registry(Generic[T]):
    """Maps names to objects; a name registers once, and an unknown name lists the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = sorted(self._items)
            raise UnknownNameError(
                f"unknown {self.kind} {name!r};{did_you_mean(name, valid)} "
                f"valid {self.kind} names: {', '.join(valid)}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
