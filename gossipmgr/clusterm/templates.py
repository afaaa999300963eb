"""clusterctl's Go text/templates (``get_actions.go``), reproduced: what ``nodes get``,
``node get``, ``global get``, ``config get`` and ``job get`` print. Checked against golden
files rendered by those templates (``tests/fixtures/clusterctl``)."""

from collections.abc import Mapping
from typing import Any

from gossipmgr.clusterm.gotext import go_fmt, go_sorted


def _tprint(v: Any) -> str:
    """What ``{{ $v }}`` prints in a text/template: a nil interface is ``<no value>``."""
    return "<no value>" if v is None else go_fmt(v)


def _type_print(out: list[str], indent: str, v: Any) -> None:
    if isinstance(v, dict):
        _map_print(out, indent, v)
    elif isinstance(v, list):
        for e in v:
            out.append(f"{indent}{_tprint(e)}\n")
    else:
        out.append(f"{indent}{_tprint(v)}\n")


def _map_print(out: list[str], indent: str, m: Mapping[str, Any]) -> None:
    for k in go_sorted(m):
        v = m[k]
        if isinstance(v, (dict, list)):
            out.append(f"{indent}{k}:\n")
            _type_print(out, indent + "    ", v)
        else:
            out.append(f"{indent}{k}: {_tprint(v)}\n")


class TemplateError(Exception):
    """The JSON does not fit the template's type (clusterctl's "failed to parse json")."""


def _section(node: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = node.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise TemplateError(f"{key} is not an object")
    return v


def _node(out: list[str], node: Any) -> None:
    if not isinstance(node, dict):
        raise TemplateError("a node is not an object")
    inv, mon, cfg = (
        _section(node, "inventory_state"),
        _section(node, "monitoring_state"),
        _section(node, "configuration_state"),
    )
    name = _tprint(inv.get("name"))
    indent = f"{name}:    "
    out.append(f"{name}: Inventory State\n")
    _map_print(out, indent, inv)
    out.append(f"{name}: Monitoring State\n")
    _map_print(out, indent, mon)
    out.append(f"{name}: Configuration State\n")
    _map_print(out, indent, cfg)
    out.append("\n")


def render_node(obj: Any) -> str:
    out: list[str] = []
    _node(out, obj)
    return "".join(out)


def render_nodes(obj: Any) -> str:
    if not isinstance(obj, dict):
        raise TemplateError("not an object")
    out: list[str] = []
    for k in go_sorted(obj):
        _node(out, obj[k])
    return "".join(out)


def _object(obj: Any) -> dict[str, Any]:
    """What a template ranges over: an object, ``null`` read as an empty one (as the Go
    templates print it)."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise TemplateError("not an object")
    return obj


def render_map(obj: Any) -> str:
    """``globalTemplate`` and ``configTemplate``."""
    out: list[str] = []
    _map_print(out, "", _object(obj))
    return "".join(out)


def _job_head(obj: Mapping[str, Any]) -> str:
    return (
        f"\nDescription: {_tprint(obj.get('desc'))}\nStatus: {_tprint(obj.get('status'))}\n"
        f"Error: {_tprint(obj.get('error'))}\n"
    )


def render_job(obj: Any) -> str:
    obj = _object(obj)
    out: list[str] = [_job_head(obj), "Logs:\n"]
    _type_print(out, "    ", obj.get("logs"))
    out.append("\n")
    return "".join(out)


def render_job_short(obj: Any) -> str:
    return _job_head(_object(obj))
