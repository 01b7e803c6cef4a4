"""Small helpers shared by the store's modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

from tpmap.model import ValidationError

__all__ = ["RowLike", "printable", "user_name"]

# A row as the store reads it back: SQLAlchemy's RowMapping (whose keys are typed wider than
# str, since a Column can look a value up too) or a plain dict of column values.
RowLike: TypeAlias = Mapping[Any, Any]


def printable(text: str, limit: int = 100) -> str:
    """``text`` safe to store and print: control and invisible characters escaped.

    >>> printable("a\\x1b[31mb")
    'a\\\\u001b[31mb'
    """
    out = []
    for char in text[: limit * 2]:
        if char.isprintable() or char == " ":
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)[:limit]


def user_name(user: str) -> str:
    """The name a change is recorded under, for a caller that is not a signed-in principal."""
    if not isinstance(user, str) or not user.strip():
        raise ValidationError({"user": "Sign in first: every change records who made it"})
    return printable(user.strip())
