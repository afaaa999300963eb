// Overview: the instances (alive/failed, gossip lag, key mismatch), the lease, Serf's
// health and the nodes by status. The lease and the nodes come through the change feed;
// peer lag and Serf health are not replicated data, so they are also re-read every 5 s.
import { get } from "./api.js";
import { badge, facts, fill, h, table, when } from "./dom.js";

export function overview() {
  const body = h("div", { class: "grid" });
  let timer = null;
  return {
    title: "Overview",
    match: (key) => key === "lease" || /^nodes\/.*\/inventory$/.test(key),
    mount(el) {
      el.append(body);
      timer = setInterval(() => this.refresh(), 5000);
    },
    unmount() { clearInterval(timer); },
    async refresh() {
      const [peers, health, nodes] = await Promise.all([
        get("info/peers"), get("health"), get("info/nodes"),
      ]);
      fill(body, instances(peers), lease(peers.lease, peers.quorum), serf(health), byStatus(nodes),
        warnings(health));
    },
  };
}

function instances(peers) {
  const rows = peers.peers.map((p) => {
    const failures = p.auth_failures || 0;
    return h("tr", {},
      h("th", { scope: "row" }, p.name, p.self ? " (this instance)" : ""),
      h("td", {}, badge(p.status)),
      h("td", {}, p.self ? "-" : String(p.lag ?? "")),
      h("td", {}, p.last_heard_ms_ago == null ? "-" : `${(p.last_heard_ms_ago / 1000).toFixed(1)} s ago`),
      h("td", {}, failures ? h("span", { class: "warn" }, `key mismatch (${failures})`) : "no"),
      h("td", {}, p.resyncing ? "yes" : "no"));
  });
  return h("section", { class: "card wide", "aria-labelledby": "h-inst" },
    h("h2", { id: "h-inst" }, "Instances"),
    table("gossipmgr instances", ["Name", "Status", "Gossip lag", "Last heard", "Key mismatch", "Resyncing"],
      rows, "no instance known"));
}

function lease(l, quorum) {
  const pairs = l
    ? [["Holder", l.holder || "(vacant)"], ["Epoch", String(l.epoch)],
      ["Expires", when(l.expires_ms)], ["Valid", l.valid ? "yes" : "no"]]
    : [["Holder", "no lease yet"]];
  if (l && l.forced_by) pairs.push(["Forced by", l.forced_by]);
  // The majority rule as this instance sees it (e.g. "no majority: sees 2 of 5 instances").
  if (quorum && quorum.reason) pairs.push(["Majority", quorum.reason]);
  return h("section", { class: "card", "aria-labelledby": "h-lease" },
    h("h2", { id: "h-lease" }, "Lease"), facts(pairs));
}

function serf(health) {
  const s = health.serf || {};
  const pairs = [
    ["Healthy", s.healthy ? "yes" : "no"],
    ["Encrypted", s.encrypted === undefined ? "-" : (s.encrypted ? "yes" : "no")],
    ["Identity conflicts", String((s.identity_conflicts || []).length)],
  ];
  if (s.error) pairs.push(["Error", s.error]);
  return h("section", { class: "card", "aria-labelledby": "h-serf" },
    h("h2", { id: "h-serf" }, "Serf on ", health.name), facts(pairs));
}

function byStatus(nodes) {
  const counts = new Map();
  for (const n of Object.values(nodes)) {
    const s = n.inventory_state.status;
    counts.set(s, (counts.get(s) || 0) + 1);
  }
  const rows = [...counts.entries()].sort().map(([s, c]) =>
    h("tr", {}, h("th", { scope: "row" }, h("a", { href: `#/nodes?status=${encodeURIComponent(s)}` }, s)),
      h("td", {}, String(c))));
  return h("section", { class: "card", "aria-labelledby": "h-nodes" },
    h("h2", { id: "h-nodes" }, "Nodes by status"),
    table(`Nodes by status (${Object.keys(nodes).length} in all)`, ["Status", "Nodes"], rows, "no nodes"));
}

function warnings(health) {
  const w = health.warnings || [];
  if (!w.length) return null;
  return h("section", { class: "card wide", "aria-labelledby": "h-warn" },
    h("h2", { id: "h-warn" }, "Warnings"), h("ul", {}, w.map((t) => h("li", {}, t))));
}
