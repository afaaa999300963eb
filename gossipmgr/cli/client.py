"""The CLI's HTTP client, its errors and where it finds the API token.

:class:`Client` is a thin sync httpx client: one method per call, every failure a
:class:`CliError` with one line for the user (the server's ``{"error"}`` text, or why the
daemon cannot be reached). :func:`find_token` is the token search both command lines share
(``gossipmgr`` and ``clusterctl``).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

#: Requests answer quickly (a job POST returns once launched); following a log is unbounded.
#: (total, connect) seconds.
REQUEST_TIMEOUT = (60.0, 5.0)
FOLLOW_TIMEOUT = (None, 5.0)
#: The agent's default data directory; its api.token is the CLI's last token source.
DEFAULT_DATA_DIR = "/var/lib/gossipmgr"
TOKEN_FILE_NAME = "api.token"


class CliError(Exception):
    """One line for the user, then exit ``code`` (1: refused/unreachable, 2: usage)."""

    def __init__(self, text: str, code: int = 1) -> None:
        super().__init__(text)
        self.code = code


class Unreachable(CliError):
    """The daemon could not be reached, or the connection broke (a follow may resume)."""


class Client:
    """A thin sync client: one method per call, errors as CliError with the server's text."""

    def __init__(
        self, url: str, token: str | None, cacert: str | None, auth_hint: str = ""
    ) -> None:
        #: Said after a 401: where the token came from, or why there is none.
        self.auth_hint = auth_hint
        self.url = url.rstrip("/")
        if "://" not in self.url:  # clusterctl took host:port
            self.url = "http://" + self.url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: Any = True
        if cacert:  # httpx 0.28 deprecates verify=<path>
            try:
                verify = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as exc:
                raise CliError(f"cannot load CA file {cacert}: {exc}", 2) from None
        # Lazy: httpx is a heavy import (~0.1 s) that `gossipmgr agent`, which shares this
        # command line, never needs.
        import httpx

        self._httpx = httpx
        self.http = httpx.Client(
            headers=headers, verify=verify, timeout=self._timeout(REQUEST_TIMEOUT)
        )

    def _timeout(self, t: tuple[float | None, float]) -> httpx.Timeout:
        return self._httpx.Timeout(t[0], connect=t[1])

    def close(self) -> None:
        self.http.close()

    def _unreachable(self, exc: httpx.HTTPError) -> Unreachable:
        why = str(exc) or type(exc).__name__
        if isinstance(exc, self._httpx.ConnectError) and "refused" in why.lower():
            why = "connection refused"
        elif isinstance(exc, self._httpx.TimeoutException):
            why = f"timed out ({type(exc).__name__})"
        return Unreachable(f"cannot reach {self.url}: {why}")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            if body is None:
                r = self.http.request(method, self.url + path)
            else:
                r = self.http.request(method, self.url + path, json=body)
        except self._httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._decode(r)

    def _decode(self, r: httpx.Response) -> Any:
        try:
            obj = r.json()
        except ValueError:
            obj = None
        if r.status_code >= 400:
            text = obj.get("error") if isinstance(obj, dict) else None
            text = str(text) if text else f"HTTP {r.status_code}: {r.text.strip()}"
            if r.status_code == 401 and self.auth_hint:
                text += f" ({self.auth_hint})"
            raise CliError(text)
        return obj

    def stream_lines(self, path: str, on_line: Callable[[str], None]) -> None:
        try:
            with self.http.stream(
                "GET", self.url + path, timeout=self._timeout(FOLLOW_TIMEOUT)
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    self._decode(r)
                for line in r.iter_lines():
                    on_line(line)
        except self._httpx.HTTPError as exc:
            raise self._unreachable(exc) from None


def default_token_file() -> str:
    """``$GOSSIPMGR_DATA_DIR/api.token``, else ``/var/lib/gossipmgr/api.token``."""
    data_dir = os.environ.get("GOSSIPMGR_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.join(data_dir, TOKEN_FILE_NAME)


def _read_token_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as exc:
        raise CliError(f"cannot read token file {path}: {exc.strerror}", 2) from None


def find_token(token: str | None = None, token_file: str | None = None) -> tuple[str | None, str]:
    """(token, where it came from or why there is none). First found wins: ``token``
    (--token), ``token_file`` (--token-file), $GOSSIPMGR_TOKEN, $GOSSIPMGR_TOKEN_FILE, then
    the agent's own token file (:func:`default_token_file`), which only the agent's user
    (and root) can read. Raises CliError (exit 2) for a named file that cannot be read."""
    if token:
        return str(token), "token from --token"
    if token_file:
        return _read_token_file(token_file), f"token from {token_file}"
    if os.environ.get("GOSSIPMGR_TOKEN"):
        return os.environ["GOSSIPMGR_TOKEN"], "token from $GOSSIPMGR_TOKEN"
    env_file = os.environ.get("GOSSIPMGR_TOKEN_FILE")
    if env_file:
        return _read_token_file(env_file), f"token from $GOSSIPMGR_TOKEN_FILE={env_file}"
    path = default_token_file()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None, f"token from {path}"
    except OSError as exc:
        # Not an error yet: an agent with no_auth needs none. Said if the server asks.
        return None, f"no token: cannot read {path}: {exc.strerror}"
