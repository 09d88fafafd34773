"""A base for dataclasses of integer counters (judge and filter statistics)."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

C = TypeVar("C", bound="Counters")


class Counters:
    """Mixin for a ``@dataclass`` whose fields are all integer counts."""

    def as_dict(self, prefix: str = "") -> dict[str, int]:
        """``{prefix + name: count}`` for metrics."""
        return {prefix + f.name: int(getattr(self, f.name)) for f in fields(self)}

    def add(self: C, other: C) -> None:
        """Add ``other``'s counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
