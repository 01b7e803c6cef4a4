"""Small helpers shared by the store's modules."""

from __future__ import annotations

from tpmap.model import ValidationError

__all__ = ["printable", "user_name"]


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
