"""A base for the enums that key the simulator's and the scheduler's hottest tables."""

from __future__ import annotations

import enum


class IdentityEnum(enum.Enum):
    """An Enum whose members hash by identity. Members are singletons, compared by identity; Enum's own __hash__
    hashes the member's name in Python on every dict or set lookup."""

    __hash__ = object.__hash__
