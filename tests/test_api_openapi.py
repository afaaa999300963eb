"""The OpenAPI document is built from what each route declares (gossipmgr.api.openapi):
the checks that keep a route and its entry from drifting apart must be able to fail."""

from __future__ import annotations

import pytest

from gossipmgr.api import OPENAPI, create_app, rule_paths, spec_paths
from gossipmgr.api.boundary import OPEN_PATH
from gossipmgr.api.openapi import Operation, Schema, document


class _NullContext:
    """Enough of an ApiContext to build the app (no route is called)."""

    replica = None
    jobs = None
    token = None


def test_a_route_added_without_its_declaration_is_not_in_the_document() -> None:
    app = create_app(_NullContext())  # type: ignore[arg-type]

    @app.get("/undeclared")
    async def undeclared() -> str:
        return ""

    assert rule_paths(app) - spec_paths() == {("/undeclared", "get")}


def test_an_operation_declared_twice_is_refused() -> None:
    op = Operation("/x/{name}", "get", "One x", (200, 401))
    with pytest.raises(ValueError, match=r"GET /x/\{name\} is declared twice"):
        document([op, Operation("/x/{name}", "get", "Another x", (200,))])


def test_two_request_schemas_under_one_name_are_refused() -> None:
    a = Operation("/a", "post", "A", (200,), Schema("Req", {"type": "object"}))
    b = Operation("/b", "post", "B", (200,), Schema("Req", {"type": "string"}))
    with pytest.raises(ValueError, match="two request schemas are named Req"):
        document([a, b])
    # The same schema used by two routes is one component.
    c = Operation("/c", "post", "C", (200,), Schema("Req", {"type": "object"}))
    assert document([a, c])["components"]["schemas"]["Req"] == {"type": "object"}


def test_only_the_open_route_is_documented_without_a_token() -> None:
    """The document's security matches the boundary's token check: every route but
    OPEN_PATH and the web console's static files needs the token, so it may answer 401,
    and says so."""
    public = set()
    for path, ops in OPENAPI["paths"].items():
        for method, op in ops.items():
            if op.get("security") == []:
                public.add((path, method))
                assert "401" not in op["responses"]
            else:
                assert "401" in op["responses"], (path, method)
    assert public == {(OPEN_PATH, "get"), ("/ui/", "get"), ("/ui/{asset}", "get")}


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_in_the_document_resolves() -> None:
    """Request schemas are declared beside their routes and may refer to shared ones
    (ExtraVars): each ``$ref`` must name a component the document has."""
    refs = _refs(OPENAPI)
    assert "#/components/schemas/ExtraVars" in refs
    for ref in refs:
        node = OPENAPI
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, ref
            node = node[part]


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ("/watch", {"prefix", "since"}),
        ("/info/node/{name}/history", {"limit"}),
        ("/info/logs/{job}", {"offset"}),
    ],
)
def test_query_parameters_are_documented(path: str, names: set[str]) -> None:
    """A client generated from the document can send the query parameters a route reads."""
    params = OPENAPI["paths"][path]["get"]["parameters"]
    query = {p["name"]: p for p in params if p["in"] == "query"}
    assert set(query) == names
    assert all(p["required"] is False and p["description"] for p in query.values())
    # path parameters stay first and required
    assert all(p["required"] for p in params if p["in"] == "path")
