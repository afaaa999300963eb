// Nodes: the inventory as a table (status, state, host-group, address) with a status
// filter and a search box; the table is redrawn from /info/nodes when a node changes.
import { get } from "./api.js";
import { badge, fill, h, nodeLink, table } from "./dom.js";

// clusterm's inventory statuses (gossipmgr/core/node.py), offered even when no node has one.
const STATUSES = ["Allocated", "Cancelled", "Decommissioned", "Incomplete", "Maintenance",
  "Provisioning", "Unallocated"];

export function nodes(params) {
  const status = h("select", { id: "f-status", onchange: () => draw() },
    h("option", { value: "" }, "any status"));
  const search = h("input", { id: "f-search", type: "search", oninput: () => draw(),
    placeholder: "name, address or host-group" });
  const box = h("div");
  let all = {};
  let shown = "";
  const want = params.get("status") || "";

  function draw() {
    const q = search.value.trim().toLowerCase();
    const st = status.value;
    const rows = Object.entries(all).sort(([a], [b]) => a.localeCompare(b))
      .filter(([, n]) => !st || n.inventory_state.status === st)
      .filter(([name, n]) => !q || [name, address(n), n.configuration_state.host_group]
        .some((v) => String(v || "").toLowerCase().includes(q)))
      .map(([name, n]) => h("tr", { "data-node": name },
        h("th", { scope: "row" }, nodeLink(name)),
        h("td", {}, badge(n.inventory_state.status)),
        h("td", {}, badge(n.inventory_state.state)),
        h("td", {}, n.configuration_state.host_group || "-"),
        h("td", {}, address(n) || "-")));
    const total = Object.keys(all).length;
    fill(box, table(`Nodes: ${rows.length} of ${total} shown`,
      ["Name", "Status", "State", "Host-group", "Address"], rows, "no node matches"));
  }

  function options() {
    const seen = new Set([...STATUSES, ...Object.values(all).map((n) => n.inventory_state.status)]);
    if (want) seen.add(want);
    const list = [...seen].sort();
    if (list.join("\n") === shown) return;  // unchanged: leave an open list alone
    shown = list.join("\n");
    const keep = status.value || want;
    fill(status, h("option", { value: "" }, "any status"), list.map((s) => h("option", { value: s }, s)));
    status.value = keep;
  }

  return {
    title: "Nodes",
    match: (key) => /^nodes\/.*\/(inventory|monitoring|host_group)$/.test(key),
    mount(el) {
      el.append(h("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
        h("label", { for: "f-status" }, "Status"), status,
        h("label", { for: "f-search" }, "Search"), search), box);
    },
    async refresh() {
      all = await get("info/nodes");
      options();
      draw();
    },
  };
}

export function address(n) {
  return n.monitoring_state.management_address || n.configuration_state.ssh_address || "";
}
