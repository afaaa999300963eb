"""clusterm's Go client (``manager.Client``) over gossipmgr's HTTP client: the request
bodies (``APIRequest``, byte for byte), the error texts it ``logrus.Fatalf``\\ s with, and
how clusterm decoded a ``config set`` file into its Config struct."""

import http
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from gossipmgr.cli.client import Client
from gossipmgr.clusterm.gotext import go_json, go_quote
from gossipmgr.config import ANSIBLE_CONFIG_KEYS


class GoError(Exception):
    """An error the Go clusterctl would ``logrus.Fatalf`` with this text."""


def api_request_json(
    *,
    nodes: Sequence[str] = (),
    addrs: Sequence[str] = (),
    host_group: str = "",
    extra_vars: str = "",
    config: Mapping[str, Any] | None = None,
) -> str:
    """The Go client's body: ``json.NewEncoder(...).Encode(&APIRequest{...})``."""
    parts = []
    if nodes:
        parts.append('"nodes":' + go_json(list(nodes)))
    if addrs:
        parts.append('"addrs":' + go_json(list(addrs)))
    if host_group:
        parts.append('"host_group":' + go_json(host_group))
    if extra_vars:
        parts.append('"extra_vars":' + go_json(extra_vars))
    parts.append('"monitor_event":{"name":"","nodes":null}')
    if config is not None:
        parts.append('"config":' + go_json(config))
    return "{" + ",".join(parts) + "}\n"


def api_request_repr(
    nodes: Sequence[str] = (),
    addrs: Sequence[str] = (),
    host_group: str = "",
    extra_vars: str = "",
    config: Any = None,
) -> str:
    """``%+v`` of ``*APIRequest`` (in the Go client's error text)."""
    cfg = "<nil>" if config is None else "0x" + "c000000000"
    return (
        f"&{{Nodes:[{' '.join(nodes)}] Addrs:[{' '.join(addrs)}] HostGroup:{host_group} "
        f"ExtraVars:{extra_vars} Job: Event:{{Name: Nodes:[]}} Config:{cfg}}}"
    )


def _lookup(obj: Mapping[str, Any], name: str) -> Any:
    """encoding/json's field match: exact name, else case-insensitive."""
    if name in obj:
        return obj[name]
    for k, v in obj.items():
        if k.lower() == name.lower():
            return v
    return None


def go_config(obj: Any) -> dict[str, Any]:
    """``(&manager.Config{}).MergeFromReader(file)``: the file decoded into clusterm's
    Config struct (unknown keys dropped, missing ones zero), in the struct's field order.
    Raises GoError with clusterm's text for a file that does not decode."""
    if not isinstance(obj, dict):
        raise GoError(
            "failed to parse config json. Error: json: cannot unmarshal "
            f"{_go_kind(obj)} into Go value of type manager.Config"
        )

    def sect(name: str) -> dict[str, Any]:
        v = _lookup(obj, name)
        return v if isinstance(v, dict) else {}

    serf, inv, ans, mgr = sect("serf"), sect("inventory"), sect("ansible"), sect("manager")
    inventory: dict[str, Any] = {}
    for k, fields in (("collins", ("url", "user", "password")), ("boltdb", ("dbfile",))):
        v = _lookup(inv, k)
        if isinstance(v, dict):  # a *Config: present once the file names it
            inventory[k] = {f: str(_lookup(v, f) or "") for f in fields}
    return {
        "serf": {
            "Addr": str(_lookup(serf, "Addr") or ""),
            "AuthKey": str(_lookup(serf, "AuthKey") or ""),
            "Timeout": _lookup(serf, "Timeout") or 0,
        },
        "inventory": inventory,
        "ansible": {k: str(_lookup(ans, k) or "") for k in ANSIBLE_CONFIG_KEYS},
        "manager": {"addr": str(_lookup(mgr, "addr") or "")},
    }


def _go_kind(v: Any) -> str:
    return {list: "array", str: "string", bool: "bool", type(None): "null"}.get(type(v), "number")


class GoClient:
    """clusterm's ``manager.Client`` over gossipmgr's HTTP client (auth, TLS)."""

    def __init__(self, url: str, client: Client, debug: bool = False) -> None:
        self.base = url if "://" in url else f"http://{url}"
        self.base = self.base.rstrip("/")
        self.hostport = self.base.split("://", 1)[1]
        self.http = client.http
        self.debug = debug

    def _url(self, rsrc: str) -> str:
        return f"{self.base}/{rsrc}"

    def _net_error(self, method: str, url: str, exc: httpx.HTTPError) -> GoError:
        why = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError) and "refused" in why.lower():
            why = f"dial tcp {self.hostport}: connect: connection refused"
        return GoError(f"{method} {go_quote(url)}: {why}")

    def post(self, rsrc: str, body: str, req_repr: str) -> None:
        url = self._url(rsrc)
        if self.debug:
            print(f"clusterctl: POST {url} {body.strip()}", file=sys.stderr)
        try:
            r = self.http.post(
                url, content=body.encode(), headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise self._net_error("Post", url, exc) from None
        _check_status(rsrc, req_repr, r)

    def get(self, rsrc: str) -> bytes:
        url = self._url(rsrc)
        if self.debug:
            print(f"clusterctl: GET {url}", file=sys.stderr)
        try:
            r = self.http.get(url)
        except httpx.HTTPError as exc:
            raise self._net_error("Get", url, exc) from None
        _check_status(rsrc, "<nil>", r)
        return r.content

    def stream(self, rsrc: str, write: Callable[[bytes], None]) -> None:
        url = self._url(rsrc)
        try:
            with self.http.stream("GET", url, timeout=httpx.Timeout(None, connect=5.0)) as r:
                if r.status_code != 200:
                    r.read()
                _check_status(rsrc, "<nil>", r)
                for chunk in r.iter_raw():
                    write(chunk)
        except httpx.HTTPError as exc:
            raise self._net_error("Get", url, exc) from None


def _check_status(rsrc: str, req_repr: str, r: httpx.Response) -> None:
    """Raise clusterm's GoError for an answer other than 200 (``req_repr``: the request
    body as Go printed it, ``<nil>`` for a GET)."""
    if r.status_code != 200:
        raise GoError(
            f"Request URL: {rsrc} Request Body: {req_repr} Response status: "
            f"{go_quote(_status(r))}. Response body: {r.text}"
        )


def _status(r: httpx.Response) -> str:
    """Go's ``resp.Status`` with the standard reason phrase (``404 Not Found``)."""
    try:
        return f"{r.status_code} {http.HTTPStatus(r.status_code).phrase}"
    except ValueError:
        return f"{r.status_code} {r.reason_phrase}".strip()
