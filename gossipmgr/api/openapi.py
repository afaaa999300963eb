"""The OpenAPI document, built from what the routes declare.

A route is registered with :meth:`ApiBlueprint.operation`, which takes its method, rule,
summary, the status codes it answers and the schema of its body, registers the view and
records an :class:`Operation`. :func:`document` builds the whole document from the records,
so a route and its documentation are one statement and cannot drift apart; a route added
any other way is missing from the document, which ``tests/test_deploy_files.py`` catches
(:func:`rule_paths` of the app against the document's paths).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from quart import Blueprint
from quart_trio import QuartTrio
from werkzeug.routing import PathConverter

from gossipmgr.api.bodies import JSON_MIMETYPE
from gossipmgr.api.hot import KEY_REGEX

_F = TypeVar("_F", bound=Callable[..., Any])

#: Codes of a route that starts a job on the lease holder (forwarded when not held here).
JOB_CODES = (200, 400, 401, 404, 409, 413, 415, 422, 503)
#: Codes of a route that writes a replicated setting.
WRITE_CODES = (200, 400, 401, 404, 413, 415, 422, 503)

_ERROR_REF = {"$ref": "#/components/responses/Error"}
#: The value of an extra-vars field, shared by several request schemas.
EXTRA_VARS_REF = {"$ref": "#/components/schemas/ExtraVars"}
_EXTRA_VARS_SCHEMA = {
    "description": "a string holding a JSON object (clusterm) or a JSON object",
    "oneOf": [{"type": "string"}, {"type": "object"}],
}
_ERROR_RESPONSE = {
    "description": "refused; the body says why",
    "content": {
        JSON_MIMETYPE: {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}


@dataclass(frozen=True)
class Schema:
    """A named request body schema (``#/components/schemas/<name>``)."""

    name: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class Operation:
    """One documented (path, method): what :meth:`ApiBlueprint.operation` records."""

    path: str  # OpenAPI form: {name}
    method: str  # lower case
    summary: str
    codes: tuple[int, ...]
    body: Schema | None = None
    public: bool = False  # no token needed
    #: descriptions of path parameters (``{name}`` in ``path``), by name
    params: tuple[tuple[str, str], ...] = ()
    #: optional query parameters (``?name=``) and their descriptions, by name
    query: tuple[tuple[str, str], ...] = ()

    def as_json(self) -> dict[str, Any]:
        op: dict[str, Any] = {
            "summary": self.summary,
            "responses": {
                str(c): ({"description": "OK"} if c < 300 else _ERROR_REF) for c in self.codes
            },
        }
        text = dict(self.params)
        names = re.findall(r"\{(\w+)\}", self.path)
        # every path parameter is declared (OpenAPI requires it), described where known
        parameters = [_path_param(n, text.get(n, "")) for n in names]
        parameters += [_query_param(n, d) for n, d in self.query]
        if parameters:
            op["parameters"] = parameters
        if self.body is not None:
            ref = {"$ref": f"#/components/schemas/{self.body.name}"}
            op["requestBody"] = {"required": True, "content": {JSON_MIMETYPE: {"schema": ref}}}
        if self.public:
            op["security"] = []
        return op


def _path_param(name: str, description: str) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": "path", "required": True}
    if description:
        p["description"] = description
    p["schema"] = {"type": "string"}
    return p


def _query_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


#: Request bodies more than one resource takes.
EXTRA_VARS_REQUEST = Schema(
    "ExtraVarsRequest", {"type": "object", "properties": {"extra_vars": EXTRA_VARS_REF}}
)
VALUE_REQUEST = Schema(
    "ValueRequest", {"type": "object", "properties": {"value": {}}, "required": ["value"]}
)


class AnyPathConverter(PathConverter):
    """``<key:NAME>``: the rest of the path, whatever it holds, as the parameter: "/" (also
    leading or doubled: werkzeug's ``path`` refuses a leading "/" and redirects a doubled
    one, which would make a PUT write another key), percent-encoded or not."""

    regex = KEY_REGEX  # api.hot: the front matches keys with it too
    part_isolating = False


#: The converters every app registers (``create_app``).
CONVERTERS: dict[str, type[PathConverter]] = {"key": AnyPathConverter}


def openapi_path(rule: str) -> str:
    """A werkzeug rule in OpenAPI form: ``/node/<path:name>`` -> ``/node/{name}``."""
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


class ApiBlueprint(Blueprint):
    """A blueprint whose routes are registered together with their documentation."""

    def __init__(self, name: str, import_name: str) -> None:
        super().__init__(name, import_name)
        self.operations: list[Operation] = []

    def operation(
        self,
        method: str,
        rule: str,
        summary: str,
        codes: tuple[int, ...],
        body: Schema | None = None,
        *,
        public: bool = False,
        params: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Callable[[_F], _F]:
        """Register the decorated view for ``method`` on ``rule`` and document it (``params``:
        descriptions of its path parameters; ``query``: of its optional query parameters)."""

        def register(view: _F) -> _F:
            p, q = tuple((params or {}).items()), tuple((query or {}).items())
            path = openapi_path(rule)
            op = Operation(path, method.lower(), summary, codes, body, public, p, q)
            self.operations.append(op)
            self.add_url_rule(rule, view_func=view, methods=[method.upper()])
            return view

        return register


def document(operations: Iterable[Operation]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``operations``. Raises ValueError on a (path, method)
    declared twice or two different schemas under one name."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"ExtraVars": _EXTRA_VARS_SCHEMA}
    for op in operations:
        ops = paths.setdefault(op.path, {})
        if op.method in ops:
            raise ValueError(f"{op.method.upper()} {op.path} is declared twice")
        ops[op.method] = op.as_json()
        if op.body is not None:
            if schemas.setdefault(op.body.name, op.body.schema) != op.body.schema:
                raise ValueError(f"two request schemas are named {op.body.name}")
    return {
        "openapi": "3.0.3",
        "info": {"title": "gossipmgr", "version": "1", "description": "See docs/api.md."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": _ERROR_RESPONSE},
            "schemas": schemas,
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


def operations_of(blueprints: Iterable[ApiBlueprint]) -> list[Operation]:
    return [op for bp in blueprints for op in bp.operations]


def rule_paths(app: QuartTrio) -> set[tuple[str, str]]:
    """Every (OpenAPI path, method) the app serves (HEAD/OPTIONS and static left out)."""
    out: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for m in rule.methods or ():
            if m not in ("HEAD", "OPTIONS"):
                out.add((openapi_path(rule.rule), m.lower()))
    return out


def spec_paths_of(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (path, method) ``doc`` documents."""
    return {(p, m) for p, ops in doc["paths"].items() for m in ops}
