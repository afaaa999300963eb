"""Gossip keys: the key file format, key ids and the ``Keyring`` (one primary, several
accepted, for rotation without downtime).

A key is 32 random bytes written as base64: the format of ``serf keygen`` and ``serf
-encrypt``, so one key file can serve both Serf and gossipmgr. A key file holds one such key,
or a Serf keyring JSON list (first = primary). Errors name the file, never the key text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gossipmgr.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEY_ID_LEN",
    "KEY_LEN",
    "Keyring",
    "generate_key",
    "key_id",
    "load_key_file",
    "load_keyring_file",
    "parse_key_text",
]

KEY_LEN = 32  # AES-256. `serf keygen` (0.8.2) also makes 32 bytes, so one key serves both.
KEY_ID_LEN = 4


def generate_key() -> str:
    """A new random 32-byte key, base64 (the format of ``serf keygen`` and ``serf -encrypt``)."""
    return base64.b64encode(os.urandom(KEY_LEN)).decode("ascii")


def key_id(key: bytes) -> bytes:
    """The 4-byte id carried in the header: first 4 bytes of SHA-256(key).

    It is public (anyone can see it on the wire); it reveals only which of the installed keys
    sealed a datagram, and saves trial decryption with every key (memberlist tries each key).
    """
    return hashlib.sha256(key).digest()[:KEY_ID_LEN]


def _decode_key(text: str, where: str) -> bytes:
    """Decode one base64 key. The key text itself never goes into an error message."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: not valid base64 (make a key with `serf keygen`)")
    if len(raw) != KEY_LEN:
        raise ConfigError(
            f"{where}: key is {len(raw)} bytes, need {KEY_LEN} (AES-256). Serf also accepts "
            "16/24-byte keys; gossipmgr does not. Make one with `serf keygen`"
        )
    return raw


def parse_key_text(text: str, source: str = "<key>") -> list[bytes]:
    """Parse a key file's text: one base64 key, or a Serf keyring JSON list (first = primary).

    Returns the distinct keys in file order. Raises ConfigError naming ``source`` and why.
    """
    stripped = text.strip()
    if not stripped:
        raise ConfigError(f"{source}: empty key file")
    if not stripped.startswith(("[", "{")):
        return [_decode_key(stripped, source)]
    try:
        items = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not a base64 key nor a JSON list of keys ({exc.msg})")
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{source}: keyring JSON must be a non-empty list of base64 keys")
    keys: list[bytes] = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"{source}: keyring entry {i} is not a string")
        key = _decode_key(item, f"{source}: keyring entry {i}")
        if key not in keys:
            keys.append(key)
    return keys


def _read(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{os.fspath(path)}: cannot read key file ({exc})")


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """The primary key from a key file (a single base64 key, or a Serf keyring JSON list).

    Raises ConfigError (naming the path and why) when the file is missing, unreadable, not
    base64/JSON, or a key is not 32 bytes. Use ``load_keyring_file`` to keep the other keys.
    """
    return parse_key_text(_read(path), os.fspath(path))[0]


def load_keyring_file(path: str | os.PathLike[str]) -> Keyring:
    """A ``Keyring`` from a key file: first key primary, the rest accepted. Raises ConfigError."""
    keys = parse_key_text(_read(path), os.fspath(path))
    return Keyring(keys[0], keys[1:])


class Keyring:
    """Immutable set of AES-256 keys: seal with ``primary``, open with any installed key.

    Rotation without downtime (Serf's install-key / use-key / remove-key): install the new key
    as *accepted* on every node, then make it *primary* everywhere, then drop the old one.
    Raises ValueError for a key that is not 32 bytes or two keys whose ids collide.
    """

    __slots__ = ("_aead", "_by_id", "_primary", "_primary_id")

    def __init__(self, primary: bytes, accepted: Sequence[bytes] = ()) -> None:
        by_id: dict[bytes, bytes] = {}
        for key in (primary, *accepted):
            if not isinstance(key, bytes) or len(key) != KEY_LEN:
                raise ValueError(f"a key must be {KEY_LEN} bytes")
            kid = key_id(key)
            if kid in by_id:
                if by_id[kid] == key:
                    continue  # the same key listed twice
                raise ValueError("two keys share a key id; generate another key")
            by_id[kid] = key
        self._by_id = by_id
        #: key id -> its cipher, made at its first use (see :meth:`_cipher`)
        self._aead: dict[bytes, AESGCM] = {}
        self._primary = primary
        self._primary_id = key_id(primary)

    @property
    def primary(self) -> bytes:
        return self._primary

    @property
    def primary_id(self) -> bytes:
        return self._primary_id

    @property
    def keys(self) -> tuple[bytes, ...]:
        """All installed keys, primary first."""
        return tuple(self._by_id.values())

    def _sealer(self) -> AESGCM:
        aead = self._opener(self._primary_id)
        assert aead is not None  # the primary is always installed
        return aead

    def _opener(self, kid: bytes) -> AESGCM | None:
        aead = self._aead.get(kid)
        if aead is None:
            key = self._by_id.get(kid)
            if key is None:
                return None
            # Function-local: cryptography is a heavy import (its Rust bindings) that the
            # agent needs only once gossip runs, after its API serves (issue 17, start time).
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            aead = self._aead[kid] = AESGCM(key)
        return aead

    def __repr__(self) -> str:  # never show key bytes
        ids = ", ".join(k.hex() for k in self._by_id)
        return f"Keyring(primary={self._primary_id.hex()}, ids=[{ids}])"
