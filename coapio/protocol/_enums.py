"""Unnamed members for integer registries: a value nobody registered still decodes."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TypeVar

E = TypeVar("E", bound=enum.IntEnum)


def unnamed_member(cls: type[E], value: object, limit: int, name: Callable[[int], str]) -> E | None:
    """The member for an unregistered ``value`` in ``0..limit``, created once and then cached, so that
    identity comparisons and the decoders' fast lookups see one object; None outside the range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        return None
    member = int.__new__(cls, value)
    member._name_ = name(value)
    member._value_ = value
    cls._value2member_map_[value] = member
    return member
