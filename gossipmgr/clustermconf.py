"""clusterm's JSON ``clusterm.conf``, read as gossipmgr's configuration keys.

``gossipmgr agent --config clusterm.conf`` accepts the file a clusterm host already has
(``gossipmgr.config.load`` sends a file that starts with ``{`` here). Pure: a parsed JSON
value in, a dict of AgentConfig keys out (the ``ansible`` key holds AnsibleConfig's keyword
arguments), ConfigError with the reason for anything clusterm did not have.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gossipmgr.errors import ConfigError


def clusterm_conf(raw: Any, where: str) -> dict[str, Any]:
    """clusterm's JSON ``clusterm.conf`` as AgentConfig keys.

    ``serf.Addr`` -> ``serf_rpc`` (clusterm talked to the node's own Serf agent there),
    ``serf.AuthKey`` -> ``serf_rpc_auth``, the ``ansible`` section (``playbook_location``
    -> ``playbook_dir``, ``extra_variables`` a string holding a JSON object). Empty values
    are skipped, as clusterm's merge over its defaults did. ``inventory`` and ``manager``
    are noted and ignored (the inventory is imported with ``gossipmgr import clusterm``;
    the API address is ``api_addr``, clusterm's ``0.0.0.0:9007`` had no authentication).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: clusterm.conf must be a JSON object")
    data: dict[str, Any] = {}
    notes: list[str] = []
    for key in raw:
        if key not in ("serf", "ansible", "inventory", "manager"):
            raise ConfigError(f"{where}: unknown clusterm.conf section {key!r}")
    serf = raw.get("serf") or {}
    if not isinstance(serf, dict):
        raise ConfigError(f"{where}: serf must be an object")
    for k, v in serf.items():
        key = {"addr": "serf_rpc", "authkey": "serf_rpc_auth", "timeout": ""}.get(k.lower())
        if key is None:
            raise ConfigError(f"{where}: unknown key serf.{k}")
        if v in ("", 0, None):
            continue
        if key:
            if not isinstance(v, str):
                raise ConfigError(f"{where} serf.{k}: {key} must be a string")
            data[key] = v
        else:
            notes.append(f"{where}: serf.Timeout is ignored")
    ans = raw.get("ansible") or {}
    if not isinstance(ans, dict):
        raise ConfigError(f"{where}: ansible must be an object")
    ansible: dict[str, Any] = {}
    for k, v in ans.items():
        if v in ("", None):
            continue
        if not isinstance(v, str):
            raise ConfigError(f"{where}: ansible.{k} must be a string")
        if k == "playbook_location":
            data["playbook_dir"] = Path(v).expanduser()
        elif k == "extra_variables":
            try:
                ev = json.loads(v)
            except ValueError as exc:
                raise ConfigError(
                    f"{where}: ansible.extra_variables must hold a JSON object: {exc}"
                ) from None
            if not isinstance(ev, dict):
                raise ConfigError(f"{where}: ansible.extra_variables must hold a JSON object")
            ansible["extra_variables"] = ev
        elif k in (
            "configure_playbook",
            "cleanup_playbook",
            "upgrade_playbook",
            "user",
            "priv_key_file",
        ):
            ansible[k] = v
        else:
            raise ConfigError(f"{where}: unknown key ansible.{k}")
    if ansible:
        data["ansible"] = ansible  # AnsibleConfig keyword arguments
    if raw.get("inventory"):
        notes.append(
            f"{where}: the inventory section is ignored; import clusterm's inventory once "
            "with `gossipmgr import clusterm --boltdb FILE`"
        )
    if raw.get("manager"):
        notes.append(
            f"{where}: the manager section is ignored; the API listens on api-addr "
            "(clusterm's 0.0.0.0:9007 had no authentication)"
        )
    data["config_notes"] = tuple(notes)
    return data
