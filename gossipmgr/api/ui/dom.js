// Building the DOM without innerHTML: every value from the API is text, never markup.

export function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, kids);
  return el;
}

export function append(el, kids) {
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

export function fill(el, ...kids) {
  el.replaceChildren();
  return append(el, kids);
}

// A table in a horizontally scrolling box (phones): head is a list of column names.
export function table(caption, head, rows, empty) {
  const t = h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: head.length }, empty))));
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption }, t);
}

export function when(ms) {
  if (!ms) return "";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function json(v) {
  return typeof v === "string" ? JSON.stringify(v) : JSON.stringify(v, null, 1);
}

export function badge(text) {
  const cls = String(text || "").toLowerCase().replace(/[^a-z]/g, "");
  return h("span", { class: `badge b-${cls}` }, text || "-");
}

// A definition list of [term, value] pairs.
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function nodeLink(name) {
  return h("a", { href: `#/node/${encodeURIComponent(name)}` }, name);
}

export function jobLink(id) {
  return h("a", { href: `#/job/${encodeURIComponent(id)}` }, id);
}
