"""The gossip peers an instance last knew, kept in its data dir for its next start.

An instance that restarts from its data dir pulls what it missed from these peers at once,
before its Serf agent is up and has named them (issue 17, restart catch-up; docs/design.md,
"Catch-up"). Serf's view replaces them as soon as it comes: the file only says where to
start. It is rewritten (atomically, no fsync: a lost or stale file only means waiting for
Serf as before) whenever the peer set or a peer's boot id changes.

The file is ``<data-dir>/peers.json``: ``{"peers": {name: "HOST:PORT"}, "alive": {name:
boot}}``, the arguments of ``GossipService.set_peers``. It is read as untrusted: anything
malformed is ignored with a warning and the start goes on without it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gossipmgr.gossip.service import GossipService

log = logging.getLogger("gossipmgr.agent")

Addr = tuple[str, int]

#: At most this many peers are kept (a catch-up asks at most ``catchup_fanout`` anyway).
MAX_PEERS = 64
VERSION = 1


class PeerFile:
    """``<data-dir>/peers.json``: :meth:`load` at start, :meth:`save` on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: tuple[dict[str, Addr], dict[str, str]] | None = None

    def load(self) -> tuple[dict[str, Addr], dict[str, str]]:
        """The peers (name -> gossip address) and the alive ones' boot ids last saved;
        empty when there is no file or it cannot be read."""
        try:
            raw = json.loads(self.path.read_text())
            peers, alive = _parse(raw)
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return {}, {}
        self._last = (peers, alive)
        return peers, alive

    def save(self, peers: Mapping[str, Addr], alive: Mapping[str, str] | None) -> None:
        """Write ``peers`` (and ``alive``: the boot ids of those Serf lists alive) when they
        differ from what the file holds. A failure is logged, never raised: the file is a
        hint for the next start."""
        now = (dict(peers), dict(alive or {}))
        if now == self._last:
            return
        body = {
            "version": VERSION,
            "peers": {n: f"{h}:{p}" for n, (h, p) in sorted(now[0].items())[:MAX_PEERS]},
            "alive": {n: b for n, b in sorted(now[1].items()) if n in now[0]},
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(body, indent=1) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not save the gossip peers to %s: %s", self.path, exc)
            return
        self._last = now


def _parse(raw: object) -> tuple[dict[str, Addr], dict[str, str]]:
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        raise ValueError("not a peers file of this version")
    peers_raw, alive_raw = raw["peers"], raw["alive"]
    if not isinstance(peers_raw, dict) or not isinstance(alive_raw, dict):
        raise TypeError("peers and alive must be objects")
    peers: dict[str, Addr] = {}
    for name, addr in list(peers_raw.items())[:MAX_PEERS]:
        if not isinstance(name, str) or not isinstance(addr, str) or ":" not in addr:
            raise ValueError(f"bad peer entry {name!r}: {addr!r}")
        host, port = addr.rsplit(":", 1)
        peers[name] = (host.strip("[]"), _port(port))
    alive = {n: b for n, b in alive_raw.items() if n in peers and isinstance(b, str)}
    return peers, alive


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return port


def catch_up_from_last_peers(gossip: GossipService[Any], path: Path, name: str) -> None:
    """Gossip with the peers this instance last knew (the file at ``path``): a restart
    pulls what it missed from them before Serf names them. Every later set is kept."""
    peer_file = PeerFile(path)
    peers, alive = peer_file.load()
    if peers:
        log.info("%s: catching up from the peers it last knew: %s", name, sorted(peers))
        gossip.set_peers(peers, alive)
    gossip.on_peers = peer_file.save
