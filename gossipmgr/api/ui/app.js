// The console's shell: asks for the token once per browser tab, learns its role
// (GET /whoami), routes #/page URLs to the pages, and keeps the page live: one GET /watch
// stream; a change of a key the page shows re-reads it (batched over 150 ms), and so do a
// new stream, a reset and a cutoff (the page may have missed changes).
import { ApiError, Watch, auth, get } from "./api.js";
import { fill, h } from "./dom.js";
import { globals } from "./globals.js";
import { job, jobs } from "./jobs.js";
import { node } from "./node.js";
import { nodes } from "./nodes.js";
import { overview } from "./overview.js";

const $ = (id) => document.getElementById(id);
let me = null;
let page = null;
let pending = null;
let watch = null;

function route() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  const params = new URLSearchParams(query || "");
  const [name, ...rest] = path.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  const role = me.role;
  if (name === "nodes") return ["nodes", nodes(params)];
  if (name === "node" && arg) return ["nodes", node(arg, role)];
  if (name === "jobs") return ["jobs", jobs(role)];
  if (name === "job" && arg) return ["jobs", job(arg, role)];
  if (name === "globals") return ["globals", globals(role)];
  return ["overview", overview()];
}

function show(navigated) {
  if (!me) return;
  if (page && page.unmount) page.unmount();
  const [section, next] = route();
  page = next;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const heading = h("h1", { tabindex: "-1", id: "page-title" }, page.title);
  const el = fill($("page"), heading);
  el.append(h("p", { id: "page-error", class: "error", role: "alert" }));
  page.mount(el);
  document.title = `${page.title} · gossipmgr`;
  refresh(page);
  if (navigated) heading.focus();  // a screen reader announces the new page
}

// The element a redraw may replace, told by what it points to or is (link, id, data-*).
function focusKey(el) {
  if (!el || el === document.body || !$("page").contains(el)) return null;
  for (const a of ["href", "id", "aria-label"]) if (el.getAttribute(a)) return [a, el.getAttribute(a)];
  return null;
}

async function refresh(p) {
  const key = focusKey(document.activeElement);
  try {
    await p.refresh();
    // A redraw replaced the focused link or button: focus its successor, so a keyboard
    // user does not fall back to the top of the page at every change.
    if (key && !$("page").contains(document.activeElement)) {
      const again = [...$("page").querySelectorAll(`[${key[0]}]`)].find((e) => e.getAttribute(key[0]) === key[1]);
      if (again) again.focus();
    }
    if (p === page) fill($("page-error"));
  } catch (err) {
    if (p === page && $("page-error")) fill($("page-error"), `could not read: ${err.message}`);
  }
}

function later() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; if (page) refresh(page); }, 150);
}

function signIn(msg) {
  me = null;
  if (watch) { watch.stop(); watch = null; }
  if (page && page.unmount) page.unmount();
  page = null;
  fill($("page"));
  fill($("who"));
  $("signout").hidden = true;
  $("login").hidden = false;
  fill($("login-error"), msg || "");
  $("token").focus();
}

async function start() {
  try {
    me = await get("whoami");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signIn(auth.token ? "the token was refused (401): check it" : "");
      return;
    }
    fill($("live"), `cannot reach the API: ${err.message}`);
    return;
  }
  $("login").hidden = true;
  document.body.dataset.role = me.role;
  fill($("who"), me.auth ? `token ${me.name} (${me.role})` : "no auth");
  $("signout").hidden = !me.auth;
  watch = new Watch(
    (ch) => { if (page && page.match(ch.key)) later(); },
    () => later(),
    (state) => fill($("live"), state));
  watch.start();
  show();
}

document.addEventListener("DOMContentLoaded", () => {
  auth.onUnauthorized = () => { if (me) signIn("the token was refused (401): sign in again"); };
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    auth.set($("token").value.trim());
    $("token").value = "";
    start();
  });
  $("signout").addEventListener("click", () => { auth.clear(); signIn(""); });
  window.addEventListener("hashchange", () => show(true));
  start();
});
