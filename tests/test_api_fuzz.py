"""Fuzzing the API over real HTTP: never a 5xx, and a refused request never changes state.

Refused inputs include values over the codec's limits (deep, wide, huge integers, 1e400,
10,000-deep JSON, 1.8 MB once encoded, long names): 413 or 422, never stored.

The server (hypercorn + the real app over a standalone instance with three nodes and no
globals) runs in the test's trio loop; Hypothesis drives a sync httpx client from a worker
thread (Hypothesis cannot drive an async test), and reads the replica back through
``trio.from_thread`` so the comparison happens on the trio thread.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio
from _apiutil import add_nodes, serving, standalone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossipmgr.api import MAX_BODY_BYTES, create_app
from gossipmgr.core.codec import MAX_KEY_PART, MAX_VALUE_DEPTH, MAX_VALUE_ITEMS

POST_ROUTES = [
    "/commission/nodes",
    "/decommission/nodes",
    "/update/nodes",
    "/discover/nodes",
    "/globals",
    "/monitor/event",
    "/config",
    "/node/node-0/extra_vars",
    "/node/node-0/host_group",
]
PUT_ROUTES = ["/globals/k", "/node/node-0/extra_vars/k"]
BODY_ROUTES = [("POST", p) for p in POST_ROUTES] + [("PUT", p) for p in PUT_ROUTES]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
not_str_list = json_values.filter(
    lambda v: v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v))
)
not_extra_vars = json_values.filter(
    lambda v: v not in (None, "") and not isinstance(v, (str, dict))
)
bad_extra_vars_text = st.text(min_size=1).filter(lambda s: not _is_json_object(s))


def _is_json_object(s: str) -> bool:
    try:
        return isinstance(json.loads(s), dict)
    except ValueError:
        return False


@st.composite
def refused_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes, set[int]]:
    """A request that must be refused, with the status codes it may get."""
    method, path = draw(st.sampled_from(BODY_ROUTES))
    kind = draw(
        st.sampled_from(["ctype", "notjson", "notobject", "types", "huge", "checks", "limits"])
    )
    h = {"Content-Type": "application/json"}
    if kind == "limits":
        # well-formed JSON whose value gossip could not carry: 413 (encoded size) or 422
        return _over_a_limit(draw)
    if kind == "ctype":
        h["Content-Type"] = draw(
            st.sampled_from(
                [
                    "text/plain",
                    "application/x-www-form-urlencoded",
                    "application/jsonx",
                    "multipart/form-data",
                ]
            )
        )
        return method, path, h, draw(st.binary(min_size=1, max_size=64)), {415}
    if kind == "notjson":
        raw = draw(st.binary(min_size=1, max_size=64).filter(lambda b: not _parses(b)))
        return method, path, h, raw, {400}
    if kind == "notobject":
        v = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        return method, path, h, json.dumps(v).encode(), {400}
    if kind == "huge":
        n = draw(st.integers(MAX_BODY_BYTES + 1, 2 * MAX_BODY_BYTES))
        return method, path, h, b'{"x": "' + b"a" * n + b'"}', {413}
    if kind == "checks":
        # well-formed, but every node is unknown: the workflow checks refuse it (422)
        names = draw(
            st.lists(
                st.text(min_size=1, max_size=12).filter(
                    lambda s: not s.startswith("node-") and not s.startswith("127.")
                ),
                min_size=1,
                max_size=3,
            )
        )
        p = draw(st.sampled_from(["/commission/nodes", "/decommission/nodes", "/update/nodes"]))
        checks = {"nodes": names, "host_group": "service-master"}
        return "POST", p, h, json.dumps(checks).encode(), {422}
    # wrong types for the route's fields
    body: dict[str, Any]
    if path in ("/commission/nodes", "/decommission/nodes", "/update/nodes"):
        variants: list[dict[str, Any]] = [
            {"nodes": draw(not_str_list)},
            {"nodes": ["node-0"], "extra_vars": draw(not_extra_vars)},
            {"nodes": ["node-0"], "extra_vars": draw(bad_extra_vars_text)},
        ]
        if path != "/decommission/nodes":  # decommission takes no host_group
            variants.append(
                {
                    "nodes": ["node-0"],
                    "host_group": draw(
                        json_values.filter(lambda v: v is not None and not isinstance(v, str))
                    ),
                }
            )
        body = draw(st.sampled_from(variants))
    elif path == "/discover/nodes":
        body = {"addrs": draw(not_str_list)}
    elif path in ("/globals", "/node/node-0/extra_vars"):
        body = {"extra_vars": draw(not_extra_vars | bad_extra_vars_text)}
    elif path == "/monitor/event":
        body = {"monitor_event": draw(json_values.filter(lambda v: not isinstance(v, dict)))}
    elif path == "/config":
        body = {"config": draw(json_values.filter(lambda v: not isinstance(v, dict)))}
    elif path == "/node/node-0/host_group":
        body = draw(
            st.sampled_from(
                [
                    {},
                    {
                        "host_group": draw(
                            json_values.filter(lambda v: v is not None and not isinstance(v, str))
                        )
                    },
                ]
            )
        )
    else:  # PUT: "value" missing
        body = draw(
            st.dictionaries(
                st.text(max_size=5).filter(lambda k: k != "value"), json_values, max_size=3
            )
        )
    return method, path, h, json.dumps(body).encode(), {400}


def _nested(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


#: Values over one of the codec's limits, as JSON text (1e400 cannot be made by json.dumps).
_OVER_LIMIT = st.one_of(
    st.integers(MAX_VALUE_DEPTH + 1, 400).map(lambda d: json.dumps(_nested(d))),
    st.integers(10_000, 12_000).map(lambda d: "[" * d + "]" * d),  # RecursionError before
    st.integers(MAX_VALUE_ITEMS + 1, MAX_VALUE_ITEMS + 50).map(lambda n: json.dumps([1] * n)),
    st.integers(2**64, 2**80).map(str),
    st.integers(-(2**80), -(2**63) - 1).map(str),
    st.sampled_from(["1e400", "-1e400", "[1E999]", '{"a": 2e308}']),
    st.just(json.dumps([0.1] * 9_000 + [{"a": [0.1] * 200_000}]).replace(" ", "")),
)


def _over_a_limit(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes, set[int]]:
    v = draw(_OVER_LIMIT)
    ev = '{"k": ' + v + "}"
    route = draw(
        st.sampled_from(
            [
                ("PUT", "/globals/k", '{"value": ' + v + "}"),
                ("PUT", "/node/node-0/extra_vars/k", '{"value": ' + v + "}"),
                ("POST", "/globals", '{"extra_vars": ' + ev + "}"),
                ("POST", "/globals", json.dumps({"extra_vars": ev})),  # clusterm's string form
                ("POST", "/node/node-0/extra_vars", '{"extra_vars": ' + ev + "}"),
                ("POST", "/commission/nodes", '{"nodes": ["node-0"], "extra_vars": ' + ev + "}"),
                ("POST", "/config", '{"config": {"ansible": {"extra_variables": ' + ev + "}}}"),
                (
                    "PUT",
                    "/globals/" + "v" * draw(st.integers(MAX_KEY_PART + 1, 600)),
                    '{"value": 1}',
                ),
                ("POST", "/globals", json.dumps({"extra_vars": {"v" * (MAX_KEY_PART + 1): 1}})),
            ]
        )
    )
    method, path, body = route
    return method, path, {"Content-Type": "application/json"}, body.encode(), {413, 422}


def _parses(b: bytes) -> bool:
    try:
        json.loads(b)
        return True
    except ValueError:
        return False


segments = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


@st.composite
def odd_requests(draw: st.DrawFn) -> tuple[str, str]:
    """Odd paths and methods that carry no body: must not change state either."""
    method = draw(st.sampled_from(["GET", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST", "PUT"]))
    known = [
        "info",
        "node",
        "nodes",
        "globals",
        "job",
        "logs",
        "extra_vars",
        "config",
        "node-0",
        "active",
        "last",
        "health",
        "metrics",
        "openapi.json",
        "peers",
        "lease",
    ]
    segs = draw(st.lists(st.sampled_from(known) | segments, min_size=0, max_size=5))
    return method, "/" + "/".join(quote(s, safe="") for s in segs)


async def test_fuzz_never_5xx_never_a_change_when_refused(tmp_path: Path) -> None:
    async with standalone(tmp_path) as ctx:
        await add_nodes(ctx, 3)
        app = create_app(ctx)
        async with serving(app) as url:

            def snapshot() -> Any:
                return trio.from_thread.run_sync(lambda: ctx.replica.state.map.copy())

            def run_fuzz() -> tuple[int, int]:
                counts = [0, 0]
                with httpx.Client(base_url=url, timeout=30) as c:

                    @settings(
                        max_examples=250,
                        deadline=None,
                        database=None,
                        suppress_health_check=list(HealthCheck),
                    )
                    @given(refused_requests())
                    def refused(req: tuple[str, str, dict[str, str], bytes, set[int]]) -> None:
                        method, path, h, raw, codes = req
                        before = snapshot()
                        r = c.request(method, path, content=raw, headers=h)
                        assert r.status_code in codes, (method, path, raw[:200], r.text)
                        assert isinstance(r.json().get("error"), str)
                        assert snapshot() == before, (method, path, raw[:200])
                        counts[0] += 1

                    @settings(
                        max_examples=250,
                        deadline=None,
                        database=None,
                        suppress_health_check=list(HealthCheck),
                    )
                    @given(odd_requests())
                    def odd(req: tuple[str, str]) -> None:
                        method, path = req
                        before = snapshot()
                        r = c.request(method, url + path)  # absolute: "//x" is legal
                        assert r.status_code < 500, (method, path, r.text)
                        assert snapshot() == before, (method, path)
                        counts[1] += 1

                    refused()
                    odd()
                return counts[0], counts[1]

            with trio.fail_after(50):
                n_refused, n_odd = await trio.to_thread.run_sync(run_fuzz)
            assert n_refused >= 200 and n_odd >= 200
            assert ctx.replica.state.globals() == {} and ctx.replica.state.jobs() == {}
