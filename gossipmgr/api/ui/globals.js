// Globals: every global extra-var, and (admin tokens only) a form to set one
// (PUT /globals/{key}) and a button per variable to remove it.
import { api, get, seg } from "./api.js";
import { fill, h, json, table } from "./dom.js";

export function globals(role) {
  const box = h("div", { class: "contents" });
  const result = h("p", { id: "global-result", role: "status" });
  const refused = h("p", { id: "global-error", class: "error", role: "alert" });
  const name = h("input", { id: "g-name", name: "g-name", required: true, autocomplete: "off" });
  const value = h("textarea", { id: "g-value", name: "g-value", rows: "3", required: true,
    "aria-describedby": "g-value-help" });
  let page;

  async function run(what, fn) {
    fill(result); fill(refused);
    try {
      await fn();
      fill(result, what);
    } catch (err) {
      fill(refused, err.message);
    }
    page.refresh();
  }

  function save(e) {
    e.preventDefault();
    let v;
    try { v = JSON.parse(value.value); } catch (err) {
      fill(result); fill(refused, `the value is not JSON: ${err.message}`);
      return;
    }
    const key = name.value;
    run(`${key} saved`, () => api("PUT", `globals/${seg(key)}`, { value: v }));
  }

  function form() {
    if (role !== "admin") return null;
    return h("section", { class: "card wide", "aria-labelledby": "h-gedit" },
      h("h2", { id: "h-gedit" }, "Set a global"),
      h("form", { id: "global-form", onsubmit: save },
        h("div", { class: "field" }, h("label", { for: "g-name" }, "Name"), name),
        h("div", { class: "field" }, h("label", { for: "g-value" }, "Value"), value,
          h("small", { id: "g-value-help" }, 'JSON: "text", 3, true, {"a": 1}, ...')),
        h("div", { class: "buttons" }, h("button", { type: "submit", class: "action" }, "Save")),
        result, refused));
  }

  function row(k, v) {
    const cells = [h("th", { scope: "row" }, k), h("td", {}, h("code", {}, json(v)))];
    if (role === "admin") {
      cells.push(h("td", { class: "buttons" },
        h("button", { type: "button", class: "action", "aria-label": `Edit ${k}`, onclick: () => {
          name.value = k; value.value = JSON.stringify(v, null, 1); value.focus();
        } }, "Edit"),
        h("button", { type: "button", class: "action", "aria-label": `Delete ${k}`,
          onclick: () => run(`${k} deleted`, () => api("DELETE", `globals/${seg(k)}`)) }, "Delete")));
    }
    return h("tr", { "data-global": k }, cells);
  }

  page = {
    title: "Globals",
    match: (key) => key.startsWith("globals/"),
    mount(el) { el.append(h("div", { class: "grid" }, box, form())); },
    async refresh() {
      const res = await get("info/globals");
      const head = role === "admin" ? ["Name", "Value", "Actions"] : ["Name", "Value"];
      fill(box, h("section", { class: "card wide", "aria-labelledby": "h-globals" },
        h("h2", { id: "h-globals" }, "Global extra-vars"),
        table("Global extra-vars", head,
          Object.entries(res.extra_vars).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => row(k, v)),
          "no global extra-var")));
    },
  };
  return page;
}
