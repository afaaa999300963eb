"""Start time (issue 17 part 5): what `gossipmgr agent` loads before it serves.

The agent restores its data dir, binds its API address, serves /health and /globals/{key}
from its front (``api.front``) and starts gossip (catching up from the peers it last knew)
and Serf; the web stack (Quart, hypercorn) loads in a thread once the catch-up answered
and the front's reads paused, or a request needs it (docs/design.md, "Start and stop").
A heavy dependency that only later parts, or only some requests, need is imported where
it is first used, and this keeps it so: a fresh interpreter's import of the daemon's
command line must not load it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from _imports import modules_loaded_by

import gossipmgr.agent
from gossipmgr.testing.standalone import START_TIMEOUT_S, build, standalone_config
from gossipmgr.testing.wait import until

#: Loaded later: cryptography when gossip starts (the keyring's ciphers, the sealer);
#: httpx by forwarding and the CLI's client commands; ansible_runner (and ansible, yaml) by
#: a playbook run; prometheus_client at the first scrape; the clusterm importer by name.
LATER = {
    "cryptography",
    "httpx",
    "ansible_runner",
    "ansible",
    "yaml",
    "prometheus_client",
    "gossipmgr.clusterm",
}
#: Loaded in a thread once the agent runs (``gossipmgr.agent.WEB_STACK``): the web stack.
WEB_STACK = {"quart", "quart_trio", "flask", "werkzeug", "jinja2", "hypercorn", "h2", "wsproto"}


def test_the_daemon_import_leaves_heavy_modules_for_later() -> None:
    loaded = set(modules_loaded_by(["gossipmgr.daemon"]))
    assert {"gossipmgr.agent", "trio", "gossipmgr.api.listen", "gossipmgr.api.front"} <= loaded
    assert sorted(LATER & loaded) == []
    assert sorted(WEB_STACK & loaded) == []


def test_the_front_serves_without_the_web_stack() -> None:
    """The front (``api.front``) answers /health, /info/globals and /globals/{key} from the
    bind, before the web stack is loaded: neither it nor what it calls (``api.hot``,
    ``api.policy``, ``api.values``, ``api.wire``) may import Quart, flask, werkzeug, jinja2
    or hypercorn.
    The agent's own import (which starts the front) loads it already."""
    front = {"gossipmgr.api.front", "gossipmgr.api.hot", "gossipmgr.api.wire"}
    loaded = set(modules_loaded_by(["gossipmgr.api.front"]))
    assert front <= loaded
    assert sorted(WEB_STACK & {m.split(".")[0] for m in loaded}) == []
    assert front <= set(modules_loaded_by(["gossipmgr.agent"]))


def test_the_api_package_loads_its_parts_at_first_use() -> None:
    """``gossipmgr.api``'s public names stay where they were (PEP 562: loaded when first
    read), and an unknown name is still an AttributeError."""
    import gossipmgr.api as api
    from gossipmgr.api.app import create_app

    assert api.create_app is create_app
    try:
        api.no_such_name  # noqa: B018 (the attribute read is the test)
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown name was found")


def test_the_keyring_makes_its_ciphers_at_first_use() -> None:
    """A keyring built at start (the agent reads its key file before serving) seals and
    opens once cryptography is loaded on demand; an unknown key id still has no cipher."""
    from gossipmgr.gossip.crypto import Sealer, node_id
    from gossipmgr.gossip.keys import Keyring, key_id

    old, new, other = (bytes([i]) * 32 for i in (1, 2, 3))
    ring = Keyring(new, [old])
    a = Sealer(Keyring(old), node_id("a"), 1)
    b = Sealer(ring, node_id("b"), 1)
    opened = b.open_untrusted(a.seal(b"hello", 1000), 1000)
    assert opened.plaintext == b"hello"
    assert ring._opener(key_id(other)) is None
    assert Sealer(ring, node_id("c"), 1).open_untrusted(b.seal(b"x", 1000), 1000).plaintext == b"x"


async def test_a_request_for_the_web_stack_ends_the_wait_for_a_pause_in_the_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start loads the web stack once the front's reads pause (``Agent._first_reads``),
    but a request only the web stack serves must not wait for that pause: with the pause
    and its bound made longer than the test, ``GET /config`` is still answered."""
    monkeypatch.setattr(gossipmgr.agent, "QUIET_S", START_TIMEOUT_S * 10)
    monkeypatch.setattr(gossipmgr.agent, "FIRST_READS_S", START_TIMEOUT_S * 10)
    agent = build(standalone_config(tmp_path, "i1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(agent.run, signals=False))
        await until(lambda: agent.front is not None and agent.gossip is not None, START_TIMEOUT_S)
        url = agent.api_url

        def ask() -> httpx.Response:
            with httpx.Client(timeout=START_TIMEOUT_S) as c:
                assert c.get(f"{url}/health").status_code == 200  # the front's
                assert not agent.ready.is_set()
                return c.get(f"{url}/config")

        res = await trio.to_thread.run_sync(ask)
        assert res.status_code == 200, res.text
        assert agent.ready.is_set()
        nursery.cancel_scope.cancel()
