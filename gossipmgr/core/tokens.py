"""Named API tokens and their roles. Pure: parsing the tokens file and matching a bearer.

The tokens file (``api_tokens_file``) holds one token a line, ``#`` comments and blank
lines allowed::

    # NAME    ROLE   HASH
    ops       admin  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    dashboard read   sha256:...

A name is 1-64 letters, digits, ``_ . @ -``; the role is ``admin`` (everything) or ``read``
(every read and the change feed; no mutation). The file holds no secret, only its SHA-256:
the secrets are 32 random bytes (``gossipmgr token add`` makes them), so a fast hash is as
safe against guessing as a slow one (nobody can search 2^256 secrets), while a slow KDF
(scrypt, bcrypt) is for low-entropy passwords and would cost every API request tens of
milliseconds. A reader of the file (a backup) learns names and roles, not a usable token.

The single ``api_token_file`` token (or ``<data_dir>/api.token``) is one more admin token
named ``default``. A bearer is hashed once and compared with every entry in constant time
(``hmac.compare_digest``, no early exit), so the answer's timing tells neither which entry
matched nor how much of a hash did.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from gossipmgr.errors import ConfigError

ADMIN: Final = "admin"
READ: Final = "read"
ROLES: Final = (ADMIN, READ)
#: The name of the one ``api_token_file`` token.
DEFAULT_NAME: Final = "default"
#: HTTP methods a read token may use.
READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HASH_RE: Final = re.compile(r"sha256:([0-9a-f]{64})")


def token_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"token name {name!r} must be 1-64 letters, digits, '_', '.', '@', '-'")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"token role must be admin or read, not {role!r}")
    return role


@dataclass(frozen=True, slots=True)
class ApiToken:
    name: str
    role: str
    digest: bytes

    def line(self) -> str:
        """This token as a line of the tokens file."""
        return f"{self.name} {self.role} sha256:{self.digest.hex()}"


def make_token(name: str, role: str, secret: str) -> ApiToken:
    return ApiToken(check_name(name), check_role(role), token_digest(secret))


def parse_tokens(text: str, where: str) -> list[ApiToken]:
    """The tokens of a tokens file's ``text``. Raises ConfigError naming ``where`` and the
    line for anything else than a comment, a blank line or ``NAME ROLE sha256:HEX``."""
    out: list[ApiToken] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ConfigError(
                f"{where}:{n}: expected NAME ROLE sha256:HEX, got {len(parts)} fields"
            )
        name, role, hashed = parts
        m = _HASH_RE.fullmatch(hashed)
        if m is None:
            raise ConfigError(f"{where}:{n}: the hash must be sha256: and 64 lowercase hex digits")
        try:
            out.append(ApiToken(check_name(name), check_role(role), bytes.fromhex(m.group(1))))
        except ConfigError as exc:
            raise ConfigError(f"{where}:{n}: {exc}") from None
    return out


class TokenTable:
    """The tokens an API accepts. Raises ConfigError for two tokens of one name or one
    secret (the name that asked must be unambiguous)."""

    def __init__(self, tokens: Iterable[ApiToken]) -> None:
        self.tokens = tuple(tokens)
        names = [t.name for t in self.tokens]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"API token names must be unique: {', '.join(dup)}")
        if len({t.digest for t in self.tokens}) != len(self.tokens):
            raise ConfigError("two API tokens have the same secret")

    @classmethod
    def with_default(cls, secret: str | None, named: Iterable[ApiToken] = ()) -> TokenTable:
        """The ``default`` admin token for ``secret`` (if any) and the ``named`` ones."""
        first = [make_token(DEFAULT_NAME, ADMIN, secret)] if secret else []
        return cls([*first, *named])

    def match(self, bearer: str) -> ApiToken | None:
        """The token whose secret is ``bearer``, or None. Every entry is compared."""
        return _match(token_digest(bearer), self.tokens)


def _match(digest: bytes, tokens: Iterable[ApiToken]) -> ApiToken | None:
    found: ApiToken | None = None
    for t in tokens:
        if hmac.compare_digest(digest, t.digest):
            found = t
    return found


@functools.lru_cache(maxsize=2)
def _default_token(secret: str) -> ApiToken:
    """The default admin token of ``secret``: made once per secret (a reload that swaps the
    secret makes the new one), not on every request (it hashes the secret)."""
    return make_token(DEFAULT_NAME, ADMIN, secret)


def match_bearer(bearer: str, default: str | None, named: TokenTable | None) -> ApiToken | None:
    """The token ``bearer`` is: the ``default`` admin token (the single token file's, read
    anew per request: a reload swaps it) or one of ``named``; None for neither. Every
    token is compared, in constant time."""
    first = [_default_token(default)] if default else []
    return _match(token_digest(bearer), [*first, *(named.tokens if named else ())])


def may_call(token: ApiToken, method: str) -> bool:
    """True when ``token``'s role allows an HTTP ``method`` (read: no mutation)."""
    return token.role == ADMIN or method.upper() in READ_METHODS
