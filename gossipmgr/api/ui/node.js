// One node: its state, its variables (extra-vars), its history, and (admin tokens only)
// the actions commission / update / decommission / forget. A refused action shows the
// API's text (clusterm's wording) in an alert next to the form. "Check mode" sends
// `check: true` with a commission, update or decommission: the job's log shows what the
// playbooks would change, and nothing changes (docs/workflows.md, "Check mode").
import { api, get, seg } from "./api.js";
import { badge, facts, fill, h, jobLink, json, table, when } from "./dom.js";
import { address } from "./nodes.js";

const ACTIONS = [
  ["commission", "Commission"], ["update", "Update"],
  ["decommission", "Decommission"], ["forget", "Forget"],
];

export function node(name, role) {
  const info = h("div", { class: "contents" });
  const vars = h("div", { class: "contents" });
  const hist = h("div", { class: "contents" });
  const result = h("p", { id: "action-result", class: "result", role: "status" });
  const refused = h("p", { id: "action-error", class: "error", role: "alert" });

  async function act(kind, form) {
    fill(result); fill(refused);
    const hg = form.elements["a-hostgroup"].value;
    const ev = form.elements["a-extravars"].value.trim();
    try {
      let res;
      if (kind === "forget") {
        res = await api("POST", `node/${seg(name)}/forget`, { force: form.elements["a-force"].checked });
        fill(result, `${name} forgotten.`);
        return res;
      }
      const body = { nodes: [name], extra_vars: ev };
      if (kind !== "decommission") body.host_group = hg;
      const check = form.elements["a-check"].checked;
      if (check) body.check = true;
      res = await api("POST", `${kind}/nodes`, body);
      fill(result, `${kind}${check ? " (check)" : ""} started: job `, jobLink(res.id), ` (${res.status}).`);
    } catch (err) {
      fill(refused, `${kind} refused: ${err.message}`);
    }
  }

  function actions() {
    if (role !== "admin") return null;
    const form = h("form", { id: "actions", "aria-labelledby": "h-actions", onsubmit: (e) => {
      e.preventDefault();
      act(e.submitter ? e.submitter.value : "commission", form);
    } },
      h("div", { class: "field" }, h("label", { for: "a-hostgroup" }, "Host-group"),
        h("select", { id: "a-hostgroup", name: "a-hostgroup" },
          h("option", { value: "service-master" }, "service-master"),
          h("option", { value: "service-worker" }, "service-worker"),
          h("option", { value: "" }, "(keep the node's: update only)"))),
      h("div", { class: "field" }, h("label", { for: "a-extravars" }, "Extra-vars (a JSON object)"),
        h("textarea", { id: "a-extravars", name: "a-extravars", rows: "3", placeholder: '{"key": "value"}' })),
      h("div", { class: "field check" },
        h("input", { id: "a-check", name: "a-check", type: "checkbox" }),
        h("label", { for: "a-check" }, "Check mode: show what would change, change nothing")),
      h("div", { class: "field check" },
        h("input", { id: "a-force", name: "a-force", type: "checkbox" }),
        h("label", { for: "a-force" }, "Force a forget (the node is alive in Serf)")),
      h("div", { class: "buttons" }, ACTIONS.map(([v, label]) =>
        h("button", { type: "submit", name: "action", value: v, class: `action a-${v}` }, label))),
      result, refused);
    return h("section", { class: "card wide", "aria-labelledby": "h-actions" },
      h("h2", { id: "h-actions" }, "Actions"), form);
  }

  return {
    title: `Node ${name}`,
    match: (key) => key.startsWith(`nodes/${name}/`),
    mount(el) {
      el.append(h("p", {}, h("a", { href: "#/nodes" }, "All nodes")),
        h("div", { class: "grid" }, info, vars, actions(), hist));
    },
    async refresh() {
      const [n, hs] = await Promise.all([
        get(`info/node/${seg(name)}`).catch((err) => ({ missing: err.message })),
        get(`info/node/${seg(name)}/history`).catch(() => ({ history: [] })),
      ]);
      fill(info, h("section", { class: "card", "aria-labelledby": "h-state" },
        h("h2", { id: "h-state" }, "State"), n.missing ? h("p", {}, n.missing) : facts([
          ["Status", h("span", { id: "node-status" }, badge(n.inventory_state.status))],
          ["Previous status", n.inventory_state.prev_status || "-"],
          ["State", badge(n.inventory_state.state)],
          ["Host-group", n.configuration_state.host_group || "-"],
          ["Address", address(n) || "-"],
          ["Label, serial", `${n.monitoring_state.label || "-"}, ${n.monitoring_state.serial_number || "-"}`],
        ])));
      const iv = n.missing ? {} : n.configuration_state.inventory_vars || {};
      fill(vars, h("section", { class: "card", "aria-labelledby": "h-vars" },
        h("h2", { id: "h-vars" }, "Extra-vars"),
        table("The node's variables", ["Name", "Value"], Object.entries(iv).sort()
          .map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, h("code", {}, json(v))))),
        "none")));
      fill(hist, history(hs.history));
    },
  };
}

function history(entries) {
  const rows = entries.map((e) => h("tr", {},
    h("td", {}, when(e.ms)), h("td", {}, e.event),
    h("td", {}, e.prev_status && e.prev_status !== e.status ? `${e.prev_status} → ${e.status}` : e.status),
    h("td", {}, e.prev_state && e.prev_state !== e.state ? `${e.prev_state} → ${e.state}` : e.state),
    h("td", {}, e.instance), h("td", {}, String(e.epoch)), h("td", {}, e.token || "-"),
    h("td", {}, e.job ? jobLink(e.job) : "-"), h("td", {}, e.reason || "")));
  return h("section", { class: "card wide", "aria-labelledby": "h-hist" },
    h("h2", { id: "h-hist" }, "History"),
    table("The node's history, newest first",
      ["When", "Event", "Status", "State", "Instance", "Epoch", "Token", "Job", "Why"], rows, "no history"));
}
