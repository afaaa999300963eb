"""The agent's configuration: typed, frozen, every default with its reason.

Sources, later wins: built-in defaults < the TOML file (``--config``) < command-line
options. Every option is also a key of the file (dashes become underscores); the ansible
section is the ``[ansible]`` table. Each key has its converter in :data:`AGENT_OPTIONS` or
:data:`ANSIBLE_OPTIONS`; unknown keys and wrong types are a ConfigError with one line naming
the key (serf's config decoder sets ErrorUnused for the same reason).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipmgr.clustermconf import clusterm_conf
from gossipmgr.errors import ConfigError
from gossipmgr.serf.addr import split_hostport

#: The keys of the ansible configuration clusterm's ``POST /config`` carries (its
#: ``manager/config.go``), in its order: what /config takes, what clusterctl prints and
#: what ``import clusterm`` copies from clusterm.conf.
ANSIBLE_CONFIG_KEYS = (
    "configure_playbook",
    "cleanup_playbook",
    "upgrade_playbook",
    "playbook_location",
    "extra_variables",
    "user",
    "priv_key_file",
)

PACKAGED_PLAYBOOKS = Path(__file__).parent / "playbooks"
#: The largest node_history_limit: entries are small, but each node's are read whole.
MAX_NODE_HISTORY = 10_000


@dataclass(frozen=True)
class AnsibleConfig:
    """clusterm's ``ansible`` section (its JSON names are kept in the API's /config)."""

    configure_playbook: str = "site.yml"
    cleanup_playbook: str = "cleanup.yml"
    upgrade_playbook: str = "rolling-upgrade.yml"
    #: Remote user and key for SSH; empty means ansible's own defaults.
    user: str = ""
    priv_key_file: str = ""
    #: Lowest-precedence extra-vars (clusterm: ``ansible.extra_variables``).
    extra_variables: Mapping[str, Any] = field(default_factory=dict)
    #: Added to every inventory host, e.g. ``ansible_connection = "local"`` for the demo.
    host_vars: Mapping[str, Any] = field(default_factory=dict)
    #: A playbook that runs longer is killed (its whole process tree) and the job errors.
    #: 0, the default, is no limit (clusterm had none; a cancel stops a hung run).
    timeout_s: float = 0.0
    #: A discover job then waits this long for the nodes to join Serf (0: no wait).
    discover_join_timeout_s: float = 120.0
    #: After each batch of a rolling upgrade, its nodes must be Discovered again within
    #: this long; a node that is not counts as failed.
    upgrade_wait_s: float = 300.0
    #: Variable names API clients may set although the extra-vars policy refuses them
    #: (``ansible_*``, ansible's magic variables; docs/security.md). Exact names. Only
    #: this file sets it: POST /config cannot.
    allow_client_vars: tuple[str, ...] = ()


#: What a webhook may be called for (``gossipmgr.runtime.webhooks``).
WEBHOOK_EVENTS = ("job.ended", "node.changed")


@dataclass(frozen=True)
class WebhookConfig:
    """One ``[[webhooks]]`` table: the receiver's URL and the events it gets."""

    url: str
    events: tuple[str, ...] = WEBHOOK_EVENTS


@dataclass(frozen=True)
class AgentConfig:
    #: Instance name: unique per instance, also its Serf node name and the lease order key.
    name: str = field(default_factory=socket.gethostname)
    #: Snapshot, log, gossip key, job logs, the embedded Serf agent's files.
    data_dir: Path = Path("/var/lib/gossipmgr")
    #: clusterm listened on 0.0.0.0:9007; we default to loopback and refuse a wider address
    #: without a token (--insecure to override).
    api_addr: str = "127.0.0.1:9007"
    #: URL peers and the CLI use to reach this API (default: derived from api_addr).
    advertise_api: str = ""
    #: UDP address for gossip between instances (advertised in our Serf tags).
    gossip_addr: str = "127.0.0.1:7950"
    #: Address the embedded Serf agent binds (memberlist gossip, TCP+UDP).
    serf_bind: str = "127.0.0.1:7946"
    #: RPC address for the embedded Serf agent.
    serf_rpc_bind: str = "127.0.0.1:7373"
    #: Use an existing Serf agent at this RPC address instead of starting one.
    serf_rpc: str = ""
    #: Serf RPC auth key (the agent's ``rpc_auth``), if any. Prefer serf_rpc_auth_file (or
    #: this key in a 0600 config file): on the command line it is in /proc/<pid>/cmdline.
    serf_rpc_auth: str = ""
    #: A file holding the Serf RPC auth key; read at start (see :func:`serf_rpc_secret`).
    serf_rpc_auth_file: Path | None = None
    #: memberlist profile for the embedded agent: lan (default) or local.
    serf_profile: str = "lan"
    #: Serf addresses to join (retried forever: a failed start-up join is not fatal).
    join: tuple[str, ...] = ()
    #: Shared 32-byte base64 key (Serf's -encrypt format) for gossip between instances, and
    #: for the embedded Serf unless serf_encrypt_key_file / serf_no_encrypt say otherwise.
    #: When unset, <data_dir>/gossip.key is used, created on first start.
    encrypt_key_file: Path | None = None
    #: A bearer token every API route but /health requires. Unset: <data_dir>/api.token,
    #: created (0600) on first start, so even loopback needs a token by default.
    #: The Serf cluster's key when it differs from the gossip key (the nodes' own Serf).
    serf_encrypt_key_file: Path | None = None
    #: Run the embedded Serf agent unencrypted, to join a Serf cluster that runs without
    #: -encrypt (contiv/ansible's nodes do). Gossip between instances stays sealed.
    serf_no_encrypt: bool = False
    #: mDNS cluster name for the embedded agent (Serf's -discover; contiv's serf_cluster_name).
    serf_discover: str = ""
    #: Network interface the embedded agent binds and runs mDNS on (Serf's -iface).
    serf_iface: str = ""
    #: A bearer token every API route but /health requires.
    api_token_file: Path | None = None
    #: Named tokens with roles (admin | read), one ``NAME ROLE sha256:HEX`` line each
    #: (docs/security.md, "Named tokens"); reloaded on SIGHUP, beside the one token above.
    api_tokens_file: Path | None = None
    #: Serve the API without any token (loud: warned at start and in /health).
    no_auth: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: With no_auth: serve the API on a non-loopback address too.
    insecure: bool = False
    playbook_dir: Path = PACKAGED_PLAYBOOKS
    #: Re-run the configure playbook on an Allocated node that comes back (clusterm #123).
    reconfigure_on_reappear: bool = False
    #: Start even though acknowledged log records in data_dir/state are damaged, keeping the
    #: intact ones (docs/operations.md, "Damaged log"). For one start after an inspection,
    #: not for a config file left on.
    accept_log_damage: bool = False
    #: Lease timing (see gossipmgr.core.lease.LeaseConfig for the reasons).
    lease_ttl_ms: int = 10_000
    lease_renew_ms: int = 2_500
    #: History entries kept per node (gossipmgr.core.history); 0 writes none.
    node_history_limit: int = 200
    #: Changes the change feed (GET /watch) keeps for clients that resume or lag behind.
    watch_history: int = 10_000
    #: Two instances: the survivor claims the lease once Serf has listed the other failed
    #: this long (a majority of two needs both; gossipmgr.core.quorum). Negative: never by
    #: itself, only by ``gossipmgr lease take --force``.
    lease_solo_after_s: float = 30.0
    log_level: str = "info"
    #: The cap of one job's replicated log (docs/api.md, "Job logs"); the newest jobs' logs
    #: are kept while their total is within 16 times this.
    job_log_max_bytes: int = 2 * 1024 * 1024
    #: Queue a workflow request that arrives while a job is active, when the request does
    #: not say (``"queue": true|false``); off: such a request is refused with 409, as by
    #: clusterm (docs/workflows.md, "Queued jobs").
    job_queue: bool = False
    #: Jobs queued at most; one more is refused with 409 (0 .. MAX_JOB_QUEUE).
    job_queue_max: int = 10
    #: Receivers the lease holder calls when a job ends and when a node's status or state
    #: changes (docs/operations.md, "Webhooks"): ``[[webhooks]]`` tables ``url``, ``events``.
    webhooks: tuple[WebhookConfig, ...] = ()
    #: The shared secret webhook requests are signed with (HMAC-SHA256).
    webhook_secret_file: Path | None = None
    ansible: AnsibleConfig = field(default_factory=AnsibleConfig)
    #: The file this was read from (SIGHUP re-reads it).
    config_file: Path | None = None
    #: What reading the file noted (a clusterm.conf's ignored sections), logged at start.
    config_notes: tuple[str, ...] = ()


#: Upper bound of ``job_queue_max`` (gossipmgr.core.jobqueue.MAX_LIMIT).
MAX_JOB_QUEUE = 1000
#: Upper bound of ``watch_history`` (each kept change costs ~200 bytes beside its value).
MAX_WATCH_HISTORY = 1_000_000


# --------------------------------------------------------------------------- converters
#
# Every option of the file has one converter: (name, value, where) -> the typed value, or
# a ConfigError naming the key. TOML gives str, int, float, bool, list and table values.

Converter = Callable[[str, Any, str], Any]


def _path(name: str, value: Any, where: str) -> Path:
    if not isinstance(value, str | Path):
        raise ConfigError(f"{where}: {name} must be a path string")
    return Path(value).expanduser()


def _bool(name: str, value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be true or false")
    return value


def _int(name: str, value: Any, where: str) -> int:
    if type(value) is not int:
        raise ConfigError(f"{where}: {name} must be an integer")
    return value


def _float(name: str, value: Any, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be a number")
    return float(value)


def _strings(name: str, value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
        raise ConfigError(f"{where}: {name} must be a list of strings")
    return tuple(value)


def _table(name: str, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {name} must be a table")
    return dict(value)


def _webhooks(name: str, value: Any, where: str) -> tuple[WebhookConfig, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: {name} must be a list of tables [[webhooks]]")
    out = []
    for i, item in enumerate(value):
        at = f"{where}: {name}[{i}]"
        if not isinstance(item, dict) or set(item) - {"url", "events"}:
            raise ConfigError(f"{at} must be a table with url and events (only)")
        url = item.get("url")
        if not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url):
            raise ConfigError(f"{at}: url must be an http:// or https:// URL")
        events = _strings("events", item.get("events", list(WEBHOOK_EVENTS)), at)
        unknown = [e for e in events if e not in WEBHOOK_EVENTS]
        if unknown or not events:
            raise ConfigError(f"{at}: events must be some of {', '.join(WEBHOOK_EVENTS)}")
        out.append(WebhookConfig(url, events))
    return tuple(out)


def _str(name: str, value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string")
    return value


#: The ``[ansible]`` table's keys: every field of AnsibleConfig.
ANSIBLE_OPTIONS: dict[str, Converter] = {
    "configure_playbook": _str,
    "cleanup_playbook": _str,
    "upgrade_playbook": _str,
    "user": _str,
    "priv_key_file": _str,
    "extra_variables": _table,
    "host_vars": _table,
    "timeout_s": _float,
    "discover_join_timeout_s": _float,
    "upgrade_wait_s": _float,
    "allow_client_vars": _strings,
}
#: The file's top-level keys: every field of AgentConfig but ``ansible`` (the table above)
#: and what only loading sets (``config_file``, ``config_notes``).
AGENT_OPTIONS: dict[str, Converter] = {
    "name": _str,
    "data_dir": _path,
    "api_addr": _str,
    "advertise_api": _str,
    "gossip_addr": _str,
    "serf_bind": _str,
    "serf_rpc_bind": _str,
    "serf_rpc": _str,
    "serf_rpc_auth": _str,
    "serf_rpc_auth_file": _path,
    "serf_profile": _str,
    "join": _strings,
    "encrypt_key_file": _path,
    "serf_encrypt_key_file": _path,
    "serf_no_encrypt": _bool,
    "serf_discover": _str,
    "serf_iface": _str,
    "api_token_file": _path,
    "api_tokens_file": _path,
    "no_auth": _bool,
    "tls_cert": _path,
    "tls_key": _path,
    "insecure": _bool,
    "playbook_dir": _path,
    "reconfigure_on_reappear": _bool,
    "accept_log_damage": _bool,
    "lease_ttl_ms": _int,
    "lease_renew_ms": _int,
    "node_history_limit": _int,
    "watch_history": _int,
    "lease_solo_after_s": _float,
    "log_level": _str,
    "job_log_max_bytes": _int,
    "job_queue": _bool,
    "job_queue_max": _int,
    "webhooks": _webhooks,
    "webhook_secret_file": _path,
}


def _convert(key: str, value: Any, options: Mapping[str, Converter], where: str) -> Any:
    convert = options.get(key.replace("-", "_"))
    if convert is None:
        raise ConfigError(f"{where}: unknown config key {key!r}")
    return convert(key.replace("-", "_"), value, where)


def _ansible_table(value: Any, where: str) -> AnsibleConfig:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [ansible] must be a table")
    where = f"{where} [ansible]"
    kwargs = {k.replace("-", "_"): _convert(k, v, ANSIBLE_OPTIONS, where) for k, v in value.items()}
    return AnsibleConfig(**kwargs)


def _file_options(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A TOML file's content as AgentConfig keyword arguments (dashes in keys become
    underscores). Raises ConfigError for an unknown key or a value of the wrong type."""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key.replace("-", "_") == "ansible":
            kwargs["ansible"] = _ansible_table(value, where)
        else:
            kwargs[key.replace("-", "_")] = _convert(key, value, AGENT_OPTIONS, where)
    return kwargs


def load(path: Path | None, overrides: Mapping[str, Any]) -> AgentConfig:
    """Defaults < file < overrides (already typed, None meaning "not given").

    The file is TOML, or clusterm's JSON ``clusterm.conf`` (a file starting with ``{``)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        if text.lstrip().startswith(b"{"):
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{path}: not valid JSON (clusterm.conf): {exc}") from None
            data = clusterm_conf(obj, str(path))
            if "ansible" in data:
                data["ansible"] = AnsibleConfig(**data["ansible"])
        else:
            try:
                raw = tomllib.loads(text.decode("utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from None
            data = _file_options(raw, str(path))
    for k, v in overrides.items():
        if v is not None:
            data[k] = v
    if data.get("serf_iface") and "serf_bind" not in data:
        # As contiv's nodes run it: Serf picks the interface's address (a loopback default
        # would not be on the interface, and Serf refuses that).
        data["serf_bind"] = f"0.0.0.0:{split_addr(AgentConfig.serf_bind, 'serf-bind')[1]}"
    if path is not None:
        data["config_file"] = path
    cfg = AgentConfig(**data)
    validate(cfg)
    return cfg


def split_addr(value: str, what: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') -> (host, port), port 0 allowed (the rule is
    ``gossipmgr.serf.addr.split_hostport``'s). Raises ConfigError naming ``what``."""
    try:
        return split_hostport(value, any_port=True)
    except ValueError as exc:
        raise ConfigError(f"{what} must be HOST:PORT, not {value!r} ({exc})") from None


def validate(cfg: AgentConfig) -> None:
    if not cfg.name or any(c.isspace() for c in cfg.name) or len(cfg.name) > 128:
        raise ConfigError(f"name must be 1-128 characters without spaces, not {cfg.name!r}")
    for what in ("api_addr", "gossip_addr", "serf_bind", "serf_rpc_bind"):
        split_addr(getattr(cfg, what), what.replace("_", "-"))
    if cfg.serf_rpc:
        split_addr(cfg.serf_rpc, "serf-rpc")
    host, _ = split_addr(cfg.gossip_addr, "gossip-addr")
    try:
        if ipaddress.ip_address(host).is_unspecified:
            raise ConfigError("gossip-addr must be a concrete address peers can reach")
    except ValueError:
        pass
    if cfg.serf_no_encrypt and cfg.serf_encrypt_key_file is not None:
        raise ConfigError("serf-no-encrypt and serf-encrypt-key-file contradict each other")
    if cfg.serf_rpc:
        embedded_only = [
            opt
            for opt, value in (
                ("serf-encrypt-key-file", cfg.serf_encrypt_key_file),
                ("serf-no-encrypt", cfg.serf_no_encrypt),
                ("serf-discover", cfg.serf_discover),
                ("serf-iface", cfg.serf_iface),
            )
            if value
        ]
        if embedded_only:
            raise ConfigError(
                f"{', '.join(embedded_only)} configure the embedded Serf agent; with serf-rpc "
                f"({cfg.serf_rpc}, e.g. from clusterm.conf's serf.Addr) the existing agent's "
                "own configuration applies: give --serf-rpc '' to run the embedded agent"
            )
    if cfg.serf_discover and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", cfg.serf_discover):
        raise ConfigError(
            "serf-discover must be 1-63 letters, digits, '-' or '_' (an mDNS label), "
            f"not {cfg.serf_discover!r}"
        )
    if cfg.serf_iface and not re.fullmatch(r"[^\s/:]{1,15}", cfg.serf_iface):
        raise ConfigError(f"serf-iface must be a network interface name, not {cfg.serf_iface!r}")
    if cfg.serf_profile not in ("lan", "local", "wan"):
        raise ConfigError(f"serf-profile must be lan, local or wan, not {cfg.serf_profile!r}")
    if cfg.serf_rpc_auth and cfg.serf_rpc_auth_file is not None:
        raise ConfigError("serf-rpc-auth and serf-rpc-auth-file exclude each other")
    if cfg.no_auth and (cfg.api_token_file is not None or cfg.api_tokens_file is not None):
        raise ConfigError("no-auth and api-token-file / api-tokens-file exclude each other")
    if not 0 <= cfg.node_history_limit <= MAX_NODE_HISTORY:
        raise ConfigError(f"node-history-limit must be 0 to {MAX_NODE_HISTORY}")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("tls-cert and tls-key go together")
    if cfg.lease_renew_ms <= 0 or cfg.lease_renew_ms >= cfg.lease_ttl_ms:
        raise ConfigError("lease-renew-ms must be positive and below lease-ttl-ms")
    if cfg.webhooks and cfg.webhook_secret_file is None:
        raise ConfigError("webhooks need webhook-secret-file (their requests are signed)")
    if not 4096 <= cfg.job_log_max_bytes <= 64 * 1024 * 1024:
        raise ConfigError("job-log-max-bytes must be within 4096 .. 67108864 (64 MiB)")
    if not 0 <= cfg.job_queue_max <= MAX_JOB_QUEUE:
        raise ConfigError(f"job-queue-max must be within 0 .. {MAX_JOB_QUEUE}")
    if not 1 <= cfg.watch_history <= MAX_WATCH_HISTORY:
        raise ConfigError(f"watch-history must be between 1 and {MAX_WATCH_HISTORY}")
    if cfg.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log-level must be debug, info, warning or error, not {cfg.log_level!r}")


def serf_rpc_secret(cfg: AgentConfig) -> str | None:
    """The Serf RPC auth key: ``serf_rpc_auth_file``'s content, else ``serf_rpc_auth``,
    else None. Raises ConfigError for an unreadable or empty file."""
    path = cfg.serf_rpc_auth_file
    if path is None:
        return cfg.serf_rpc_auth or None
    return read_secret_file(path, "serf-rpc-auth-file")


def read_secret_file(path: Path, what: str) -> str:
    """A secret kept in a file (a token, a key): its stripped content. Raises ConfigError
    naming ``what`` and the file when it cannot be read or is empty."""
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError:  # a ValueError: a SIGHUP reload would not catch it
        raise ConfigError(f"{what} {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{what} {path} is empty")
    return secret
