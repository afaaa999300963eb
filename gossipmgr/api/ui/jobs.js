// Jobs: the history (newest first) and, per job, its record and its log, followed live
// through GET /info/logs/{id}?offset=N: the lines arrive as the runner replicates them; a
// broken stream is resumed at the number of lines received, so none is lost or doubled.
// A queued job (status Queued, with its queue_position) can be cancelled before it runs.
import { api, get, lines, seg } from "./api.js";
import { badge, facts, fill, h, jobLink, table, when } from "./dom.js";

const JOB_KEY = /^jobs\/[^/]+$/;

// Cancels the job `id`, Running or Queued (a queued one ends at once); the button's name
// says which.
function cancelButton(role, onDone, msg, id, status) {
  if (role !== "admin") return null;
  const queued = status === "Queued";
  const label = `Cancel ${queued ? "queued" : "running"} job ${id}`;
  return h("button", { type: "button", class: "action a-cancel", "aria-label": label, onclick: async () => {
    fill(msg);
    try {
      const res = await api("POST", "job/cancel", { job: id });
      fill(msg, `job ${res.id} cancelled`);
    } catch (err) {
      fill(msg, `cancel refused: ${err.message}`);
    }
    onDone();
  } }, queued ? "Cancel" : "Cancel the running job");
}

function status(j) {
  return j.status === "Queued" && j.queue_position ? [badge(j.status), ` #${j.queue_position}`] : [badge(j.status)];
}

// A rolling upgrade's progress (the record's `upgrade`): batches done, the one running,
// the nodes that failed.
function upgradeText(u) {
  const running = u.current >= 0 ? `; batch ${u.current + 1} running: ${u.batches[u.current].join(", ")}` : "";
  const failed = u.failed.length ? `; failed: ${u.failed.join(", ")}` : "";
  return `${u.done} of ${u.batches.length} batches done${running}${failed} (max-fail ${u.max_fail})`;
}

export function jobs(role) {
  const box = h("div");
  const bar = h("div", { class: "buttons" });
  const msg = h("p", { class: "error", role: "alert" });
  const page = {
    title: "Jobs",
    match: (key) => JOB_KEY.test(key),
    mount(el) { el.append(bar, msg, box); },
    async refresh() {
      const res = await get("info/jobs");
      const list = Array.isArray(res) ? res : res.jobs;
      // the cancel names the job shown: one that started since the page was drawn is not hit
      const running = list.find((j) => j.status === "Running");
      fill(bar, running ? cancelButton(role, () => page.refresh(), msg, running.id, running.status) : null);
      const refresh = () => page.refresh();
      fill(box, table("Jobs, newest first", ["Id", "Task", "Status", "Nodes", "Asked by", "Started", "Ended", "Action"],
        list.map((j) => h("tr", {},
          h("th", { scope: "row" }, jobLink(j.id)), h("td", {}, j.check ? `${j.task} (check)` : j.task),
          h("td", {}, ...status(j)),
          h("td", {}, (j.nodes || j.addrs || []).join(", ")), h("td", {}, j.requested_by || "-"),
          h("td", {}, when(j.started_ms || j.created_ms)), h("td", {}, when(j.ended_ms)),
          h("td", {}, j.status === "Queued" ? cancelButton(role, refresh, msg, j.id, j.status) : null))),
        "no job yet"));
    },
  };
  return page;
}

export function job(id, role) {
  const rec = h("div");
  const bar = h("div", { class: "buttons" });
  const msg = h("p", { class: "error", role: "alert" });
  const count = h("span", { id: "log-count" }, "0");
  const log = h("pre", { id: "job-log", role: "log", "aria-label": `Log of job ${id}`, tabindex: "0" });
  const state = h("span", { id: "log-state" }, "reading");
  const ctl = new AbortController();
  let got = 0;

  async function follow() {
    let tries = 0;
    while (!ctl.signal.aborted && tries < 30) {
      try {
        for await (const line of lines(`info/logs/${seg(id)}?offset=${got}`, ctl.signal)) {
          log.append(line + "\n");
          got += 1;
          tries = 0;
          count.textContent = String(got);
        }
        fill(state, "complete");
        return;
      } catch (err) {
        if (ctl.signal.aborted) return;
        if (err.status && err.status !== 503) { fill(state, `not available: ${err.message}`); return; }
        tries += 1;
        fill(state, "reconnecting");
        await new Promise((res) => setTimeout(res, Math.min(200 * 2 ** tries, 5000)));
      }
    }
  }

  const page = {
    title: `Job ${id}`,
    match: (key) => key === `jobs/${id}`,
    mount(el) {
      el.append(h("p", {}, h("a", { href: "#/jobs" }, "All jobs")), rec, bar, msg,
        h("section", { class: "card wide", "aria-labelledby": "h-log" },
          h("h2", { id: "h-log" }, "Log"),
          h("p", {}, count, " lines, ", state), log));
      follow();
    },
    unmount() { ctl.abort(); },
    async refresh() {
      const j = await get(`info/job/${seg(id)}`);
      const queued = j.status === "Queued";
      fill(bar, j.status === "Running" || queued ? cancelButton(role, () => page.refresh(), msg, id, j.status) : null);
      fill(rec, h("section", { class: "card wide", "aria-labelledby": "h-job" },
        h("h2", { id: "h-job" }, j.desc || j.task),
        facts([
          ["Status", h("span", { id: "job-status" }, ...status(j))],
          ["Task", j.check ? `${j.task} (check mode: changes nothing)` : j.task],
          ["Nodes", (j.nodes || j.addrs || []).join(", ") || "-"],
          ["Runner", j.runner || "-"], ["Epoch", String(j.epoch ?? "-")],
          ["Asked by", j.requested_by || "-"],
          ...(j.upgrade ? [["Upgrade", h("span", { id: "job-upgrade" }, upgradeText(j.upgrade))]] : []),
          ["Created", when(j.created_ms)], ["Started", when(j.started_ms)], ["Ended", when(j.ended_ms)],
          ["Error", j.error || "-"],
        ])));
    },
  };
  return page;
}
