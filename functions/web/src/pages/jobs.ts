import { api, type JobRow, TERMINAL } from "../api";
import { fmtAic, fmtDuration, fmtTime, h, link, message, stateBadge, table } from "../ui";
import { cost, every } from "./common";

export function jobsPage(root: HTMLElement): () => void {
  document.title = "Jobs · aic";
  const body = h("div", { id: "jobs" }, h("p", { class: "muted" }, "Loading your jobs…"));
  root.append(
    h("div", { class: "row" }, h("h1", {}, "Jobs"), link("/new", "New job", { class: "button", id: "new-job" })),
    body,
  );
  let last = "";
  return every(2000, async () => {
    let rows: JobRow[];
    let more = false;
    try {
      const r = await api<{ jobs: JobRow[]; more: boolean }>("GET", "jobs?limit=200");
      rows = r.jobs;
      more = r.more;
    } catch (e) {
      body.replaceChildren(message((e as Error).message, "error"));
      last = "";
      return;
    }
    const key = JSON.stringify(rows);
    if (key === last) return;
    last = key;
    if (rows.length === 0) {
      body.replaceChildren(h("p", {}, "No jobs yet. ", link("/new", "Start one"), " or run `aic run train.py`."));
      return;
    }
    const costs = await Promise.all(rows.map((r) => cost(r.request)));
    const out = rows.map((j, i) => {
      const r = j.request;
      const s = j.status;
      const what = r ? r.name || r.entrypoint : "";
      const wall = s && TERMINAL.includes(s.state) ? s.detail?.wall_seconds : undefined;
      return [
        link(`/jobs/${j.job_id}`, h("span", {}, what ? `${what} ` : "", h("span", { class: "muted" }, j.job_id.slice(-8)))),
        s ? stateBadge(s.state) : "",
        r ? `${r.kind === "serve" ? "serve" : "train"} · ${r.miners} × ${r.gpus_per_miner}` : "",
        r ? `${r.max_hours} h` : "",
        costs[i] === null ? "" : costs[i] === 0n ? "free" : fmtAic(costs[i]!),
        wall === undefined ? "" : fmtDuration(wall),
        fmtTime(s?.at),
      ];
    });
    body.replaceChildren(table(["Job", "State", "Miners × GPUs", "Hours paid", "Cost", "Execution time", "Updated"], out));
    if (more) body.append(h("p", { class: "muted" }, "Showing your newest 200 jobs."));
  });
}
