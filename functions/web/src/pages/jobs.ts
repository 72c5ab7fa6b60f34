import { api, info, type JobRow, TERMINAL } from "../api";
import { refreshAccount } from "../nav";
import { fmtAic, fmtDuration, fmtTime, h, link, message, pickWallet, stateBadge, status, table } from "../ui";
import { account, ensureChain, mined, send, wallet } from "../wallet";
import { cost, every } from "./common";

interface Deposit {
  run: string;
  tx: string | null;
  amount: string;
  deadline: number;
  due: boolean;
  reclaim: { to: string; data: string } | null;
}

/// The caller's deposits that are due back (held past their deadline: the pool never settled
/// them), each with a button that reclaims it through the wallet. Nothing when there are none,
/// or the pool takes no deposits.
async function showDue(el: HTMLElement, st: ReturnType<typeof status>): Promise<void> {
  let r: { deposits: Deposit[] };
  try {
    r = await api<{ deposits: Deposit[] }>("GET", "deposits");
  } catch {
    return;
  }
  const due = r.deposits.filter((d) => d.due && d.reclaim);
  if (due.length === 0) {
    el.replaceChildren();
    return;
  }
  const rows = due.map((d) => {
    const b = h("button", { type: "button", class: "secondary", "data-reclaim": d.run }, "Reclaim");
    b.addEventListener("click", async () => {
      b.disabled = true;
      try {
        const i = await info();
        const w = await wallet(pickWallet);
        await ensureChain(w.provider, i.chain_id, i.chain);
        const from = await account(w.provider);
        st.say("Take the deposit back: confirm in your wallet…");
        const tx = await send(w.provider, from, d.reclaim!.to, d.reclaim!.data, "reclaiming the deposit");
        await mined(w.provider, tx);
        st.say(`Reclaimed ${fmtAic(d.amount)} in ${tx}.`, "ok");
        refreshAccount();
        await showDue(el, st);
      } catch (e) {
        st.say((e as Error).message, "error");
        b.disabled = false;
      }
    });
    return [d.tx || d.run, fmtAic(d.amount), fmtTime(new Date(d.deadline * 1000).toISOString()), b];
  });
  el.replaceChildren(
    h("h2", {}, "Deposits you can take back"),
    h("p", { class: "muted" }, "The pool did not settle these by their deadline (a job paid but never submitted, or a run never settled): they are yours."),
    table(["Deposit", "Amount", "Due back since", ""], rows),
  );
}

export function jobsPage(root: HTMLElement): () => void {
  document.title = "Jobs · aic";
  const body = h("div", { id: "jobs" }, h("p", { class: "muted" }, "Loading your jobs…"));
  const due = h("div", { id: "due-deposits" });
  const said = status();
  root.append(
    h("div", { class: "row" }, h("h1", {}, "Jobs"), link("/new", "New job", { class: "button", id: "new-job" })),
    due,
    said.el,
    body,
  );
  void showDue(due, said);
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
        wall == null ? "" : fmtDuration(wall),
        fmtTime(s?.at),
      ];
    });
    body.replaceChildren(table(["Job", "State", "Miners × GPUs", "Hours paid", "Cost", "Execution time", "Updated"], out));
    if (more) body.append(h("p", { class: "muted" }, "Showing your newest 200 jobs."));
  });
}
