"""The agent's secret files: the API token, the gossip keyring and the embedded Serf's key.

Each is read (or created, mode 0600) at start; a SIGHUP reload reads the token (and the
named tokens file, ``api_tokens_file``) and the gossip keyring again, not the Serf key (it
went into the embedded agent's configuration at its start). See docs/security.md for who
may read them.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
from pathlib import Path

from gossipmgr.config import AgentConfig, read_secret_file
from gossipmgr.core.tokens import TokenTable, parse_tokens
from gossipmgr.errors import ConfigError
from gossipmgr.gossip.crypto import Keyring, generate_key, load_keyring_file

log = logging.getLogger("gossipmgr.agent")

#: The token file's name in the data directory when ``api_token_file`` is not set.
TOKEN_FILE_NAME = "api.token"


def load_or_create_keyring(cfg: AgentConfig) -> tuple[Keyring, Path]:
    path = cfg.encrypt_key_file or (cfg.data_dir / "gossip.key")
    if cfg.encrypt_key_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_key() + "\n")
        log.warning("created gossip key %s: copy it to every instance (--encrypt-key-file)", path)
    return load_keyring_file(path), path


def token_path(cfg: AgentConfig) -> Path | None:
    """The token file the API uses: ``api_token_file``, else ``<data_dir>/api.token``;
    None only with ``no_auth``."""
    if cfg.api_token_file is not None:
        return cfg.api_token_file
    if cfg.no_auth:
        return None
    return cfg.data_dir / TOKEN_FILE_NAME


def load_or_create_token(cfg: AgentConfig) -> str | None:
    """The API token (docs/security.md section 3). With no ``api_token_file`` and no
    ``no_auth``, ``<data_dir>/api.token`` is created on first start: 32 random bytes,
    url-safe base64, mode 0600, owned by the agent's user; its path is logged."""
    path = token_path(cfg)
    if path is None:
        return None
    if cfg.api_token_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it in between: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            log.warning(
                "created API token %s (mode 0600): the CLI reads it from there "
                "(GOSSIPMGR_TOKEN_FILE); copy it to every instance (api_token_file)",
                path,
            )
    return read_token(path)


def read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    return read_secret_file(path, "api token file")


def load_tokens(cfg: AgentConfig, token: str | None) -> TokenTable | None:
    """The named tokens of ``api_tokens_file`` (``gossipmgr.core.tokens``), accepted beside
    ``token`` (the ``api_token_file`` one: an admin token named ``default``). None without
    auth or without the file. Raises ConfigError for an unreadable or malformed file, or
    one whose names or secrets clash with each other or with ``token``."""
    if cfg.no_auth or cfg.api_tokens_file is None:
        return None
    named = []
    path = cfg.api_tokens_file
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read api tokens file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:  # a ValueError: a SIGHUP reload would not catch it
            raise ConfigError(f"api tokens file {path} is not UTF-8 text") from None
        named = parse_tokens(text, str(path))
    TokenTable.with_default(token, named)  # no clash with the default token
    return TokenTable(named)


def serf_key(cfg: AgentConfig, keyring: Keyring) -> str | None:
    """The key the embedded Serf agent encrypts with: none with --serf-no-encrypt, the Serf
    cluster's own with --serf-encrypt-key-file, else the gossip key (one key for both)."""
    if cfg.serf_no_encrypt:
        return None
    if cfg.serf_encrypt_key_file is not None:
        return base64.b64encode(load_keyring_file(cfg.serf_encrypt_key_file).primary).decode()
    return base64.b64encode(keyring.primary).decode()
