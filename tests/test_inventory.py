"""Pure tests of gossipmgr.core.inventory: the whole status table, every check's exact text."""

from __future__ import annotations

import itertools

import pytest

from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.state import ClusterState, host_group_key, inventory_key, node_var_key
from gossipmgr.errors import BadRequest, CheckFailed, Conflict, NotFound

# clusterm's table (docs/migrating-from-clusterm.md), written out independently of the code.
CONTRACT_EDGES = {
    ("Incomplete", "Unallocated"),
    ("Unallocated", "Provisioning"),
    ("Provisioning", "Unallocated"),
    ("Provisioning", "Allocated"),
    ("Allocated", "Cancelled"),
    ("Allocated", "Maintenance"),
    ("Cancelled", "Decommissioned"),
    ("Decommissioned", "Provisioning"),
    ("Maintenance", "Unallocated"),
    ("Maintenance", "Allocated"),
}
ALL = [
    "Incomplete",
    "Unallocated",
    "Provisioning",
    "Allocated",
    "Cancelled",
    "Decommissioned",
    "Maintenance",
]


class Clock:
    def __init__(self) -> None:
        self.ms = 1000

    def __call__(self) -> Timestamp:
        self.ms += 1
        return Timestamp(self.ms, 0, "t")


@pytest.fixture
def ts() -> Clock:
    return Clock()


def add_node(
    st: ClusterState,
    ts: Clock,
    name: str,
    *,
    status: str = "Unallocated",
    state: str = "Discovered",
    hg: str = "service-master",
    addr: str | None = None,
) -> None:
    label, serial = name.split("-", 1)
    st.apply(inv.d_discovered(st, name, label, serial, addr or f"10.0.0.{len(st) + 1}", 1, ts()))
    rec = {"status": status, "prev_status": "Unallocated", "state": state, "prev_state": "Unknown"}
    st.apply(st.d_set(inventory_key(name), {**rec, "epoch": 1}, ts()))
    st.apply(st.d_set(host_group_key(name), hg, ts()))


# --------------------------------------------------------------------------- the table


def test_vocabulary_matches_the_contract() -> None:
    assert list(inv.STATUSES) == ALL
    assert set(inv.TRANSITIONS) == set(ALL)
    assert inv.STATES == ("Unknown", "Discovered", "Disappeared")


@pytest.mark.parametrize(("a", "b"), list(itertools.product(ALL, ALL)))
def test_every_pair(a: str, b: str) -> None:
    expected = a == b or (a, b) in CONTRACT_EDGES
    assert inv.allowed(a, b) is expected
    if expected:
        inv.check_transition(a, b)
    else:
        with pytest.raises(Conflict) as ei:
            inv.check_transition(a, b)
        assert str(ei.value) == f'transition from "{a}" to "{b}" is not allowed'
        assert ei.value.status_hint == 409


def test_unknown_status_is_refused_except_to_itself() -> None:
    assert inv.allowed("Bogus", "Bogus")
    with pytest.raises(Conflict, match='transition from "Bogus" to "Allocated" is not allowed'):
        inv.check_transition("Bogus", "Allocated")


def test_status_paths_use_only_table_edges() -> None:
    for kind, path in inv.STATUS_PATHS.items():
        if path is None:
            assert kind == "discover"
            continue
        assert inv.allowed(path.during, path.success), kind
        assert inv.allowed(path.during, path.failure), kind
    assert inv.STATUS_PATHS["commission"] == inv.StatusPath(
        "Provisioning", "Allocated", "Unallocated"
    )
    assert inv.STATUS_PATHS["decommission"] == inv.StatusPath(
        "Cancelled", "Decommissioned", "Decommissioned"
    )
    assert inv.STATUS_PATHS["update"] == inv.StatusPath("Maintenance", "Allocated", "Unallocated")


# --------------------------------------------------------------------------- monitoring


def test_discovered_new_node(ts: Clock) -> None:
    st = ClusterState()
    d = inv.d_discovered(st, "n-1", "n", "1", "10.0.0.1", 3, ts())
    st.apply(d)
    rec = st.node("n-1")
    assert rec is not None
    assert st.map.get(inventory_key("n-1")) == {
        "status": "Unallocated",
        "prev_status": "Incomplete",
        "state": "Discovered",
        "prev_state": "Unknown",
        "epoch": 3,
    }
    assert rec.host_group == "service-master"
    assert inv.node_json(rec) == {
        "monitoring_state": {"label": "n", "serial_number": "1", "management_address": "10.0.0.1"},
        "inventory_state": {
            "name": "n-1",
            "status": "Unallocated",
            "prev_status": "Incomplete",
            "state": "Discovered",
            "prev_state": "Unknown",
        },
        "configuration_state": {
            "inventory_name": "n-1",
            "host_group": "service-master",
            "ssh_address": "10.0.0.1",
            "inventory_vars": {"node_name": "n-1", "node_addr": "10.0.0.1"},
        },
    }
    # A repeated event changes nothing (no churn in the replicated record).
    assert len(inv.d_discovered(st, "n-1", "n", "1", "10.0.0.1", 3, ts())) == 0


def test_node_vars_appear_in_inventory_vars(ts: Clock) -> None:
    st = ClusterState()
    add_node(st, ts, "n-1", addr="10.0.0.9")
    st.apply(st.d_set(node_var_key("n-1", "color"), "red", ts()))
    cfg = inv.node_json(st.node("n-1"))["configuration_state"]  # type: ignore[arg-type]
    assert cfg["inventory_vars"] == {"node_name": "n-1", "node_addr": "10.0.0.9", "color": "red"}


def test_disappeared_then_discovered_keeps_status(ts: Clock) -> None:
    st = ClusterState()
    add_node(st, ts, "n-1", status="Allocated")
    assert not inv.reappears_allocated(st, "n-1")
    st.apply(inv.d_disappeared(st, "n-1", 2, ts()))
    rec = st.node("n-1")
    assert rec is not None
    assert (inv.status_of(rec), inv.state_of(rec)) == ("Allocated", "Disappeared")
    assert rec.inventory.prev_state == "Discovered"
    assert len(inv.d_disappeared(st, "n-1", 2, ts())) == 0  # already Disappeared
    assert len(inv.d_disappeared(st, "ghost-1", 2, ts())) == 0  # unknown node: no-op
    assert inv.reappears_allocated(st, "n-1")
    st.apply(inv.d_discovered(st, "n-1", "n", "1", "10.0.0.7", 2, ts()))
    rec = st.node("n-1")
    assert rec is not None
    assert st.map.get(inventory_key("n-1")) == {
        "status": "Allocated",
        "prev_status": "Unallocated",
        "state": "Discovered",
        "prev_state": "Disappeared",
        "epoch": 2,
    }
    assert rec.addr == "10.0.0.7"  # monitoring refreshed


def test_check_monitor_node() -> None:
    assert inv.check_monitor_node({"label": "a", "serial": "1", "addr": "x"}) == ("a", "1", "x")
    for bad in ({"label": "", "serial": "1"}, {"label": "a"}, "a-1", {"label": 1, "serial": "2"}):
        with pytest.raises(BadRequest):
            inv.check_monitor_node(bad)


# --------------------------------------------------------------------------- moves


def test_move_statuses_all_or_nothing(ts: Clock) -> None:
    st = ClusterState()
    add_node(st, ts, "a-1", status="Unallocated")
    add_node(st, ts, "b-1", status="Allocated")
    add_node(st, ts, "c-1", status="Unallocated")
    before = st.map.copy()
    with pytest.raises(Conflict) as ei:
        inv.move_statuses(st, ["a-1", "b-1", "c-1"], "Provisioning", 2, ts())
    assert str(ei.value) == (
        "failed to update b-1's state in inventory, Error: "
        'transition from "Allocated" to "Provisioning" is not allowed'
    )
    assert st.map == before  # reads never mutate; no delta came out
    d = inv.move_statuses(st, ["a-1", "c-1"], "Provisioning", 2, ts())
    st.apply(d)
    for n in ("a-1", "c-1"):
        rec = st.node(n)
        assert rec is not None
        assert rec.inventory.status == "Provisioning"
        assert rec.inventory.prev_status == "Unallocated"
        assert rec.inventory.epoch == 2
    with pytest.raises(CheckFailed, match="doesn't exists"):
        inv.move_statuses(st, ["ghost-1"], "Provisioning", 2, ts())


def test_finish_statuses_skips_nodes_that_moved_on(ts: Clock) -> None:
    st = ClusterState()
    add_node(st, ts, "a-1", status="Provisioning")
    add_node(st, ts, "b-1", status="Allocated")
    d, skipped = inv.finish_statuses(
        st, ["a-1", "b-1", "ghost-1"], "Provisioning", "Unallocated", 4, ts()
    )
    st.apply(d)
    assert skipped == ["b-1", "ghost-1"]
    assert st.node("a-1").inventory.status == "Unallocated"  # type: ignore[union-attr]
    assert st.node("b-1").inventory.status == "Allocated"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- checks


@pytest.fixture
def cluster(ts: Clock) -> ClusterState:
    st = ClusterState()
    add_node(st, ts, "m-1", status="Allocated", hg="service-master", addr="10.0.0.1")
    add_node(st, ts, "w-1", status="Allocated", hg="service-worker", addr="10.0.0.2")
    add_node(st, ts, "u-1", status="Unallocated", addr="10.0.0.3")
    add_node(st, ts, "gone-1", status="Unallocated", state="Disappeared", addr="10.0.0.4")
    return st


def test_shared_checks(cluster: ClusterState) -> None:
    for kind in ("commission", "decommission", "update"):
        with pytest.raises(CheckFailed) as ei:
            inv.check_workflow(cluster, kind, [], "service-master")
        assert str(ei.value) == "atleast one node should be specified"
        assert ei.value.status_hint == 422
        with pytest.raises(CheckFailed) as ei:
            inv.check_workflow(cluster, kind, ["u-1", "nope"], "service-master")
        assert str(ei.value) == 'node with name or address "nope" doesn\'t exists'
        with pytest.raises(CheckFailed) as ei:
            inv.check_workflow(cluster, kind, ["gone-1", "u-1"], "service-master")
        assert str(ei.value) == (
            "one or more nodes are not in discovered state, please check their network "
            "reachability. Non-discovered nodes: [gone-1]"
        )


def test_nodes_resolve_by_name_or_address(cluster: ClusterState) -> None:
    names = inv.check_workflow(cluster, "commission", ["10.0.0.3", "u-1"], "service-master")
    assert names == ["u-1"]
    assert inv.get_node(cluster, "10.0.0.1").name == "m-1"
    with pytest.raises(NotFound, match='node with name or address "zz" doesn\'t exists'):
        inv.get_node(cluster, "zz")


def test_commission_checks(cluster: ClusterState, ts: Clock) -> None:
    for hg in ("", "service-boss"):
        with pytest.raises(CheckFailed) as ei:
            inv.check_workflow(cluster, "commission", ["u-1"], hg)
        assert str(ei.value) == f'invalid or empty host-group specified: "{hg}"'
    assert inv.check_workflow(cluster, "commission", ["u-1"], "service-worker") == ["u-1"]
    # Without a Discovered+Allocated master elsewhere a worker is refused.
    st = ClusterState()
    add_node(st, ts, "m-1", status="Allocated", hg="service-master", state="Disappeared")
    add_node(st, ts, "u-1")
    msg = (
        "Cannot commission a worker node without existence of a master node in the cluster, "
        "make sure atleast one master node is commissioned."
    )
    with pytest.raises(CheckFailed) as ei:
        inv.check_workflow(st, "commission", ["u-1"], "service-worker")
    assert str(ei.value) == msg
    assert inv.check_workflow(st, "commission", ["u-1"], "service-master") == ["u-1"]


def test_decommission_checks(cluster: ClusterState, ts: Clock) -> None:
    msg = (
        "decommissioning the specified node(s) will leave only worker nodes in the cluster, "
        "make sure all worker nodes are decommissioned before last master node."
    )
    with pytest.raises(CheckFailed) as ei:
        inv.check_workflow(cluster, "decommission", ["m-1"], "")
    assert str(ei.value) == msg
    # Workers first, or master and workers together, is fine.
    assert inv.check_workflow(cluster, "decommission", ["w-1"], "") == ["w-1"]
    assert inv.check_workflow(cluster, "decommission", ["m-1", "w-1"], "") == ["m-1", "w-1"]
    # With a second master the first may go.
    add_node(cluster, ts, "m-2", status="Allocated", hg="service-master")
    assert inv.check_workflow(cluster, "decommission", ["m-1"], "") == ["m-1"]


def test_update_checks(cluster: ClusterState) -> None:
    with pytest.raises(CheckFailed) as ei:
        inv.check_workflow(cluster, "update", ["w-1"], "service-boss")
    assert str(ei.value) == 'invalid host-group specified: "service-boss"'
    assert "invalid host-group specified" in str(ei.value)
    with pytest.raises(CheckFailed) as ei:
        inv.check_workflow(cluster, "update", ["m-1"], "service-worker")
    assert str(ei.value) == (
        "Updating these nodes as worker will result in no master node in the cluster, "
        "make sure atleast one node is commissioned as master."
    )
    assert inv.check_workflow(cluster, "update", ["m-1"], "") == ["m-1"]  # host-group optional
    assert inv.check_workflow(cluster, "update", ["w-1"], "service-worker") == ["w-1"]


def test_discover_checks(cluster: ClusterState) -> None:
    with pytest.raises(CheckFailed) as ei:
        inv.check_discover(cluster, ["10.0.0.9", "10.0.0.1", "10.0.0.2"])
    assert str(ei.value) == (
        "one or more nodes already exist with the specified management addresses. "
        "Existing nodes: [m-1:10.0.0.1 w-1:10.0.0.2]"
    )
    assert inv.check_discover(cluster, ["10.0.0.9", "10.0.0.8", "10.0.0.9"]) == [
        "10.0.0.9",
        "10.0.0.8",
    ]
    with pytest.raises(CheckFailed, match="atleast one address should be specified"):
        inv.check_discover(cluster, [])
    with pytest.raises(BadRequest):
        inv.check_discover(cluster, [""])


def test_host_group_setter_check() -> None:
    assert inv.check_host_group("service-worker") == "service-worker"
    with pytest.raises(CheckFailed, match='invalid or empty host-group specified: "x"'):
        inv.check_host_group("x")


def test_go_list() -> None:
    assert inv.go_list([]) == "[]"
    assert inv.go_list(["a", "b"]) == "[a b]"
