"""Who is using tpmap: the signed-in principal, roles, passwords and the server secret.

Core module (no Bokeh, no database): the store checks principals against its tables, the
server resolves one from a signed cookie, and the CLI creates accounts through the store.

Roles
-----
``clinician``
    Records and sees the patients of their own clinic(s); may use ``/explore`` too.
``researcher``
    ``/explore`` and research exports only: never patient codes, notes or names.
``admin``
    Manages users and clinics (on the command line); sees no patient data unless also a
    clinician.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from tpmap import model
from tpmap.model import ValidationError

if TYPE_CHECKING:
    from argon2 import PasswordHasher

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "SECRET_ENV",
    "AccessDenied",
    "Principal",
    "Role",
    "Secret",
    "derive_key",
    "hash_password",
    "load_secret",
    "needs_rehash",
    "validate_clinic_name",
    "validate_password",
    "validate_roles",
    "validate_user_name",
    "verify_password",
]

SECRET_ENV = "TPMAP_SECRET"
SECRET_FILE_NAME = "secret"
MIN_SECRET_LENGTH = 32
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024


class Role(StrEnum):
    """What an account may do (an account may hold several roles)."""

    CLINICIAN = "clinician"
    RESEARCHER = "researcher"
    ADMIN = "admin"


ROLES: tuple[str, ...] = tuple(r.value for r in Role)


class AccessDenied(PermissionError):
    """The principal may not do this (signed out, disabled, or the wrong role)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The signed-in user as every page and store call sees them.

    Attributes
    ----------
    name : str
        The account name; recorded as the author of every change.
    roles : frozenset of str
        Some of :data:`ROLES`.
    clinic_ids : frozenset of int
        The clinics whose patients a clinician records and sees.
    active : bool
        False once the account was disabled.
    login_id : int or None
        The sign-in (server-side session) this principal came from, when it came from one.
    """

    name: str
    roles: frozenset[str] = field(default_factory=frozenset)
    clinic_ids: frozenset[int] = field(default_factory=frozenset)
    active: bool = True
    login_id: int | None = None

    @property
    def is_clinician(self) -> bool:
        """True for an active account with the clinician role."""
        return self.active and Role.CLINICIAN in self.roles

    @property
    def is_researcher(self) -> bool:
        """True for an active account with the researcher role."""
        return self.active and Role.RESEARCHER in self.roles

    @property
    def is_admin(self) -> bool:
        """True for an active account with the admin role."""
        return self.active and Role.ADMIN in self.roles

    def may_open(self, page: str) -> bool:
        """Whether this principal may open the page at path ``page`` (e.g. ``/annotate``).

        >>> Principal("rosa", frozenset({"researcher"})).may_open("/annotate")
        False
        >>> Principal("rosa", frozenset({"researcher"})).may_open("/explore")
        True
        """
        if not self.active:
            return False
        if page == "/annotate":
            return self.is_clinician
        if page == "/explore":
            return self.is_clinician or self.is_researcher
        return True


# -- validation of account fields -------------------------------------------------------------

_USER_NAME = re.compile(r"^[\w.@'-]+(?: [\w.@'-]+)*$")


def validate_user_name(value: object) -> str:
    """An account name: 1-64 letters, digits, ``. _ @ ' -`` and single inner spaces.

    >>> validate_user_name(" anna ")
    'anna'
    """
    text = model.clean_text(value, "User name", 64)
    if not text:
        raise ValidationError({"name": "User name is required"})
    if not _USER_NAME.match(text):
        raise ValidationError(
            {"name": "User name is letters, digits, '.', '_', '@', \"'\", '-' and single spaces"}
        )
    return text


def validate_clinic_name(value: object) -> str:
    """A clinic name: 1-100 characters of plain text."""
    text = model.clean_text(value, "Clinic name", 100)
    if not text:
        raise ValidationError({"name": "Clinic name is required"})
    return text


def validate_password(value: object) -> str:
    """A new password: at least :data:`MIN_PASSWORD_LENGTH` characters, no control characters."""
    if not isinstance(value, str):
        raise ValidationError({"password": "Password must be text"})
    if len(value) < MIN_PASSWORD_LENGTH:
        raise ValidationError(
            {"password": f"Password is at least {MIN_PASSWORD_LENGTH} characters"}
        )
    if len(value) > MAX_PASSWORD_LENGTH:
        raise ValidationError({"password": f"Password is at most {MAX_PASSWORD_LENGTH} characters"})
    model.clean_text(value, "Password", MAX_PASSWORD_LENGTH, strip=False)
    return value


def validate_roles(values: Iterable[object]) -> frozenset[str]:
    """One or more of :data:`ROLES`."""
    roles: set[str] = set()
    for value in values:
        text = str(value).strip().lower() if isinstance(value, str) else ""
        if text not in ROLES:
            raise ValidationError({"role": f"Role must be one of: {', '.join(ROLES)}"})
        roles.add(text)
    if not roles:
        raise ValidationError({"role": f"Give at least one role: {', '.join(ROLES)}"})
    return frozenset(roles)


# -- passwords ---------------------------------------------------------------------------------


def _hasher() -> PasswordHasher:
    # argon2-cffi's defaults (RFC 9106 low-memory profile, argon2id); imported lazily so that
    # reading the database for research never loads it.
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (argon2-cffi's default parameters)."""
    return _hasher().hash(validate_password(password))


def verify_password(hashed: str, password: str) -> bool:
    """True when ``password`` matches ``hashed``; one argon2 verification, never raises."""
    from argon2.exceptions import InvalidHashError, VerificationError

    if not isinstance(password, str) or len(password) > MAX_PASSWORD_LENGTH:
        password = ""
    try:
        return bool(_hasher().verify(hashed, password))
    except (VerificationError, InvalidHashError, ValueError):
        return False


def needs_rehash(hashed: str) -> bool:
    """True when ``hashed`` was made with other parameters than today's defaults."""
    try:
        return bool(_hasher().check_needs_rehash(hashed))
    except Exception:  # an unreadable hash: replace it at the next successful sign-in
        return True


# A valid hash of a random password, verified when the name is unknown so that a wrong name
# costs the same argon2 verification as a wrong password (no timing difference to probe).
_DUMMY_HASH: str | None = None


def dummy_hash() -> str:
    """A hash to verify against when the account does not exist."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher().hash(secrets.token_urlsafe(16))
    return _DUMMY_HASH


# -- the server secret -------------------------------------------------------------------------


@dataclass(frozen=True)
class Secret:
    """The server secret and where it came from.

    ``explicit`` is True when the operator configured it (``TPMAP_SECRET`` or a secret file),
    False when tpmap generated it in its data directory.
    """

    value: bytes = field(repr=False)
    source: str
    explicit: bool

    def key(self, purpose: str) -> bytes:
        """A key for one purpose, derived from the secret (see :func:`derive_key`)."""
        return derive_key(self.value, purpose)


def derive_key(secret: bytes, purpose: str) -> bytes:
    """HMAC-SHA256 of ``purpose`` under ``secret``: one key per use, none revealing another.

    >>> derive_key(b"s" * 32, "cookies") != derive_key(b"s" * 32, "audit")
    True
    """
    return hmac.new(secret, f"tpmap:{purpose}".encode(), hashlib.sha256).digest()


def default_data_dir() -> Path:
    """tpmap's folder in the user data directory (where the generated secret is kept)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("tpmap", appauthor=False))


def _check_secret(text: str, where: str) -> bytes:
    text = text.strip()
    if len(text) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"the secret in {where} is too short: use at least {MIN_SECRET_LENGTH} random "
            "characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    return text.encode()


def load_secret(
    *,
    secret_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    create: bool = True,
) -> Secret:
    """Find the server secret: ``secret_file``, else ``$TPMAP_SECRET``, else the data directory.

    A missing secret in the data directory is generated once (48 random bytes, URL-safe text)
    and written with permissions 0600.

    Raises
    ------
    ValueError
        With a message for the operator when the secret is unusable.
    """
    env = os.environ if env is None else env
    if secret_file is not None:
        path = Path(secret_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read the secret file {path}: {exc.strerror}") from None
        return Secret(_check_secret(text, str(path)), f"file {path}", explicit=True)
    if env.get(SECRET_ENV, "").strip():
        return Secret(_check_secret(env[SECRET_ENV], SECRET_ENV), SECRET_ENV, explicit=True)
    directory = Path(data_dir) if data_dir is not None else default_data_dir()
    path = directory / SECRET_FILE_NAME
    if not path.exists():
        if not create:
            raise ValueError(
                f"no secret configured: set {SECRET_ENV} or give --secret-file "
                f"(or let tpmap generate one in {directory})"
            )
        directory.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: two processes starting at once do not overwrite each other's secret.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(secrets.token_urlsafe(48) + "\n")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(
            f"the secret file {path} is readable by others (mode {mode:o}): chmod 600 it"
        )
    text = path.read_text(encoding="utf-8")
    return Secret(_check_secret(text, str(path)), f"file {path}", explicit=False)
