"""Forwarding to the lease holder over real HTTP: a forwarded request must reach the same
route, with the same path parameters, as the client's request to the non-holder."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import httpx
from _apiutil import serving, standalone

from gossipmgr.api import create_app

#: Node names that are one path segment only once percent-encoded: a query mark, a
#: fragment mark, a percent sign, a space, and a slash (node routes take the rest of the
#: path as the name), and a letter outside ASCII.
NAMES = ["rack?1", "rack#2", "50%", "a b", "dc/r4", "nœud"]


async def test_a_forwarded_node_route_keeps_the_node_name(tmp_path: Path) -> None:
    auth = {"Authorization": "Bearer t"}
    async with standalone(tmp_path, "b", token="t") as holder:
        async with serving(create_app(holder)) as hurl:
            async with (
                standalone(tmp_path, "a", token="t", claim=False, forward_to=hurl) as other,
                serving(create_app(other)) as ourl,
                httpx.AsyncClient(base_url=ourl, headers=auth) as c,
            ):
                entries = [{"name": n, "status": "Unallocated"} for n in NAMES]
                r = await c.post("/inventory/import", json={"nodes": entries})
                assert r.status_code == 200, r.text
                assert all(holder.replica.state.node(n) is not None for n in NAMES)
                assert not other.replica.is_holder()
                for name in NAMES:
                    r = await c.post(f"/node/{quote(name, safe='')}/forget", json={})
                    assert (r.status_code, r.json().get("forgotten")) == (200, name), r.text
                    assert holder.replica.state.node(name) is None
