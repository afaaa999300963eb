"""Forwarding to the lease holder over real HTTP: a forwarded request must reach the same
route, with the same path parameters, as the client's request to the non-holder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio
from _apiutil import serving, standalone

from gossipmgr.api import FORWARDED_HEADER, create_app
from gossipmgr.runtime.context import AgentApiContext
from gossipmgr.testing.fakeserf import FakeSerfCluster
from gossipmgr.testing.standalone import fake_serf, shared_key
from gossipmgr.testing.wait import until

#: Node names that are one path segment only once percent-encoded: a query mark, a
#: fragment mark, a percent sign, a space, and a slash (node routes take the rest of the
#: path as the name), a letter outside ASCII, and slashes around dot segments (an HTTP
#: client removes "/../" and "/./" from a path: the holder saw "/node/dc/r7/forget").
NAMES = ["rack?1", "rack#2", "50%", "a b", "dc/r4", "nœud", "dc/../r7", "dc/./r8", "r9/.."]
#: Nodes a mangled forwarded path would reach instead: they must stay.
BYSTANDERS = ["r7", "dc/r8", "dc"]


@asynccontextmanager
async def forwarding(
    tmp_path: Path, name: str
) -> AsyncIterator[tuple[AgentApiContext, AgentApiContext, httpx.AsyncClient]]:
    """Two instances in one (fake) Serf cluster, gossiping for real: ``a`` holds the lease,
    ``name`` forwards to it once it has learnt of it; yields (holder, forwarder, a client of
    the forwarder's API with the token)."""
    kw: dict[str, Any] = {
        "token": "t",
        "cluster": FakeSerfCluster(),
        "encrypt_key_file": shared_key(tmp_path),
    }
    async with (
        standalone(tmp_path, "a", **kw) as holder,
        standalone(tmp_path, name, claim=False, **kw) as other,
    ):
        with trio.fail_after(30):  # the holder's lease reaches the forwarder over gossip
            while other.holder_api_url() != holder.agent.api_url:
                await other.replica.wait_change()
        async with (
            serving(create_app(other)) as ourl,
            httpx.AsyncClient(base_url=ourl, headers={"Authorization": "Bearer t"}) as c,
        ):
            yield holder, other, c


async def test_a_forwarded_node_route_keeps_the_node_name(tmp_path: Path) -> None:
    """Two instances in one (fake) Serf cluster, gossiping for real: ``a`` holds the lease,
    ``b`` forwards to it."""
    async with forwarding(tmp_path, "b") as (holder, other, c):
        entries = [{"name": n, "status": "Unallocated"} for n in NAMES + BYSTANDERS]
        r = await c.post("/inventory/import", json={"nodes": entries})
        assert r.status_code == 200, r.text
        assert all(holder.replica.state.node(n) is not None for n in NAMES)
        assert not other.replica.is_holder()
        for name in NAMES:
            r = await c.post(f"/node/{quote(name, safe='')}/forget", json={})
            assert (r.status_code, r.json().get("forgotten")) == (200, name), r.text
            assert holder.replica.state.node(name) is None
        assert all(holder.replica.state.node(n) is not None for n in BYSTANDERS)


async def test_forwarding_carries_header_bytes_ascii_cannot(tmp_path: Path) -> None:
    """A non-holder named with a letter outside ASCII (config allows any name without
    spaces) forwards and proxies like any other, and a client's header bytes outside ASCII
    reach the holder as sent. Both were a 500: httpx encodes str header values as ASCII."""
    async with forwarding(tmp_path, "nœud") as (_, _, c):
        r = await c.post("/job/cancel")
        assert (r.status_code, r.json()) == (409, {"error": "job is not Running"})
        ctype = b"application/json; note=caf\xe9"
        r = await c.post("/job/cancel", content=b"{}", headers={b"Content-Type": ctype})
        assert (r.status_code, r.json()) == (409, {"error": "job is not Running"})
        # the loop guard names the forwarder as it is named
        guard = {FORWARDED_HEADER.encode(): "nœud".encode()}
        r = await c.post("/job/cancel", headers=guard)
        assert r.status_code == 503, r.text
        assert "forwarded by nœud" in r.json()["error"]


async def test_a_holder_api_url_httpx_cannot_use_is_a_503(tmp_path: Path) -> None:
    """The holder's API URL comes from its Serf ``api`` tag (``--advertise-api``); one httpx
    refuses before connecting (a control character, a host label over 63 characters) was a
    500, not the 503 "cannot be reached" of any other unusable URL."""
    async with forwarding(tmp_path, "b") as (_, other, c):
        for bad in ("http://127.0.0.1:1\x00", "http://" + "a" * 64 + ".example"):
            fake_serf(other.agent).see("a", api=bad)
            await until(partial(_holder_url_is, other, bad), 30, "the new api tag")
            r = await c.post("/job/cancel")
            assert r.status_code == 503, r.text
            assert "cannot be reached" in r.json()["error"]


def _holder_url_is(ctx: AgentApiContext, url: str) -> bool:
    return ctx.holder_api_url() == url
