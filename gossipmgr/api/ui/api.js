// The API as the console uses it: every request carries the token of this browser tab
// (sessionStorage), a refusal becomes an ApiError holding the server's text.

const KEY = "gossipmgr.token";
// The API is one level above the console (/ui/), so a proxy may mount both under a prefix.
const BASE = new URL("..", document.baseURI).href;

export const auth = {
  get token() { return sessionStorage.getItem(KEY) || ""; },
  set(t) { sessionStorage.setItem(KEY, t); },
  clear() { sessionStorage.removeItem(KEY); },
  onUnauthorized: () => {},
};

export class ApiError extends Error {
  constructor(status, text) { super(text); this.status = status; }
}

function headers(extra) {
  const out = { ...extra };
  if (auth.token) out.Authorization = `Bearer ${auth.token}`;
  return out;
}

async function refusal(r) {
  const text = await r.text();
  let msg = `${r.status} ${r.statusText}`;
  try { msg = JSON.parse(text).error || msg; } catch { /* not JSON: keep the status */ }
  const err = new ApiError(r.status, msg);
  if (r.status === 401) auth.onUnauthorized(err);
  return err;
}

export async function api(method, path, body) {
  const init = { method, cache: "no-store", headers: headers({}) };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(BASE + path, init);
  if (!r.ok) throw await refusal(r);
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path) => api("GET", path);

export function seg(name) { return encodeURIComponent(name); }

// The lines of a streamed text response (a job's log), as they arrive. A line cut by a
// broken connection is not yielded: the caller resumes at the number of lines it got.
export async function* lines(path, signal) {
  const r = await fetch(BASE + path, { headers: headers({}), signal, cache: "no-store" });
  if (!r.ok) throw await refusal(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, i);
      buf = buf.slice(i + 1);
    }
  }
  if (buf) yield buf;
}

// The blocks of a text/event-stream body: {id, event, data} (comments dropped).
async function* sse(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n?/g, "\n");
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const ev = { id: null, event: "message", data: "" };
      for (const line of block.split("\n")) {
        const c = line.indexOf(":");
        if (c === 0) continue;
        const field = c < 0 ? line : line.slice(0, c);
        const val = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
        if (field === "id") ev.id = val;
        else if (field === "event") ev.event = val;
        else if (field === "data") ev.data += (ev.data ? "\n" : "") + val;
      }
      yield ev;
    }
  }
}

const sleep = (ms) => new Promise((res) => setTimeout(res, ms));

// GET /watch read with fetch() (EventSource cannot send the Authorization header). Calls
// onChange({kind, key, value?}) per change, onResync() whenever what the page shows may
// have missed changes (a new stream, a reset, after a cutoff), onState(text) for the
// indicator. A broken stream is reopened with Last-Event-ID, backing off to 5 s.
export class Watch {
  constructor(onChange, onResync, onState) {
    Object.assign(this, { onChange, onResync, onState, lastId: "", after: "", stopped: false });
  }

  start() { this.ctl = new AbortController(); this.loop(); }

  stop() { this.stopped = true; this.ctl.abort(); }

  async loop() {
    let delay = 200;
    while (!this.stopped) {
      try {
        const hdr = headers({ Accept: "text/event-stream" });
        if (this.lastId) hdr["Last-Event-ID"] = this.lastId;
        const r = await fetch(BASE + "watch", { headers: hdr, signal: this.ctl.signal, cache: "no-store" });
        if (!r.ok) throw await refusal(r);
        delay = 200;
        await this.read(r.body);
      } catch (err) {
        if (this.stopped) return;
        if (err instanceof ApiError && err.status === 401) { this.onState("signed out"); return; }
      }
      if (this.stopped) return;
      this.onState("reconnecting");
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }

  async read(body) {
    let first = true;
    for await (const ev of sse(body)) {
      if (ev.id) this.lastId = ev.id;
      if (first) {
        first = false;
        this.onState(this.after ? `live, re-read after a ${this.after}` : "live");
        this.after = "";
        this.onResync("open");
      }
      if (ev.event === "put" || ev.event === "delete") {
        this.onChange({ kind: ev.event, ...JSON.parse(ev.data) });
      } else if (ev.event === "reset") {
        this.onState("live, re-read after a reset");
        this.onResync("reset");
      } else if (ev.event === "cutoff") {
        // Too far behind: start again from now, and re-read once the new stream is open.
        this.lastId = "";
        this.after = "cutoff";
        this.onState("cut off, reconnecting");
        return;
      }
    }
  }
}
