import { api, info, type JobRow, listAll, type ServingRegistration, session, sign, TERMINAL, userPrefix } from "../api";
import { deploymentUrl, namedUrl } from "../origin";
import type { ServingMinute } from "../types/serving-minute";
import { ulid } from "../ulid";
import { h, link, message, stateBadge, status, table } from "../ui";
import { every } from "./common";
import { isPaid, submit, type CodeFile } from "./submit";


/// A deployment's last hour as `GET /v1/jobs/<id>/stats` sums it up.
interface Figures {
  requests: number;
  replica_errors: number;
  gateway_errors: number;
  refused: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  max_in_flight: number;
  cold_starts: number;
  max_cold_start_ms: number | null;
}

/// "12 requests · 1 error", "p50 ≤25 ms · p95 ≤250 ms · p99 ≤250 ms", "at most 3 in flight": a line each.
function figures(f: Figures | null): (string | HTMLElement)[] {
  if (!f) return ["—"];
  if (!f.requests) return ["no requests yet"];
  const errors = f.replica_errors + f.gateway_errors;
  const plural = (n: number, w: string) => `${n} ${w}${n === 1 ? "" : "s"}`;
  const refused = f.refused ? ` · ${f.refused} refused (no key)` : "";
  const lines = [`${plural(f.requests, "request")} · ${plural(errors, "error")}${refused}`];
  if (f.p50_ms != null) lines.push(`p50 ≤${f.p50_ms} ms · p95 ≤${f.p95_ms} ms · p99 ≤${f.p99_ms} ms`);
  lines.push(`at most ${f.max_in_flight} in flight`);
  if (f.cold_starts) lines.push(`${plural(f.cold_starts, "cold start")} (longest ${((f.max_cold_start_ms ?? 0) / 1000).toFixed(1)} s)`);
  return lines.map((l) => h("div", {}, l));
}

export function deploymentsPage(root: HTMLElement): () => void {
  document.title = "Deployments · aic";
  const st = status();
  const body = h("div", { id: "deployments" }, h("p", { class: "muted" }, "Loading…"));
  root.append(
    h("div", { class: "row" }, h("h1", {}, "Deployments"), link("/new?kind=serve", "Deploy", { class: "button" })),
    st.el,
    body,
  );
  let busy = false;
  /// ServingRegistration counts being typed, kept across redraws.
  const wanted = new Map<string, number>();
  /// A new deployment of the same project (as deployed) with `want` replicas, paid for the
  /// same hours; once its replicas answer, the old one is removed (what it did not use comes
  /// back). As `aic deploy scale` does.
  const scaleTo = async (old: string, label: string, want: number, button: HTMLButtonElement) => {
    if (busy) return;
    busy = true;
    button.disabled = true;
    try {
      const me = session()!.address;
      const oldBase = `${userPrefix(me)}jobs/${old}/`;
      const id = await submit(
        `scale:${old}`,
        async () => {
          const [u] = await sign([{ method: "GET", key: `${oldBase}request.json` }]);
          const prev = (await (await fetch(u.url)).json()) as Record<string, unknown>;
          st.say(`Copying ${label}'s project…`);
          const objs = await listAll(`${oldBase}code/`);
          const urls = objs.length ? await sign(objs.map((o) => ({ method: "GET", key: o.key }))) : [];
          const files: CodeFile[] = await Promise.all(
            objs.map(async (o, k) => ({ rel: o.key.slice(`${oldBase}code/`.length), file: await (await fetch(urls[k].url)).blob() })),
          );
          // The new replicas start beside the old ones: a pool without room for them says so
          // before anything is paid.
          const gpus = Number(prev.gpus_per_miner) || 1;
          const { gateways } = await api<{ gateways: { miners: { free_gpus: number }[] }[] }>("GET", "pool");
          const room = Math.max(0, ...gateways.map((g) => g.miners.filter((m) => m.free_gpus >= gpus).length));
          if (room < want) {
            throw new Error(
              `the pool has room for ${room} more replica(s) beside the ones serving now, not ${want}; ${label} stays as it is (to change it on a full pool, remove it and deploy again)`,
            );
          }
          const now = new Date();
          const req: Record<string, unknown> = { ...prev, job_id: ulid(), miners: want, created_at: now.toISOString(), expires_at: new Date(now.getTime() + 3600_000).toISOString() };
          delete req.payment;
          delete req.signature;
          return { req, files };
        },
        (t) => st.say(t),
        () => undefined,
      );
      st.say(`Deployment ${id} started with ${want} replica(s); ${label} is removed once they answer…`);
      const deadline = Date.now() + 300_000;
      for (;;) {
        const { replicas } = await api<{ replicas: ServingRegistration[] }>("GET", `jobs/${id}/replicas`);
        const now = Date.now();
        if (replicas.filter((x) => x.healthy && Date.parse(x.heartbeat_at) + x.ttl_seconds * 1000 >= now).length >= want) break;
        if (Date.now() > deadline) {
          // Not up in time: the new one is removed (its deposit comes back), the old one stays.
          await api("POST", `jobs/${id}/cancel`).catch(() => undefined);
          throw new Error(`the new deployment ${id} did not answer in 5 min and was removed; ${label} stays as it is (see ${id}'s log)`);
        }
        await new Promise((r) => setTimeout(r, 1000));
      }
      await api("POST", `jobs/${old}/cancel`);
      st.say(`Scaled ${label} to ${want} replica(s): deployment ${id} serves it now; the old one is removed and what it did not use comes back.`, "ok");
    } catch (e) {
      st.say(`Scaling ${label}: ${(e as Error).message}${isPaid(`scale:${old}`) ? " Press Scale again: it will not pay twice." : ""}`, "error");
    } finally {
      busy = false;
      button.disabled = false;
    }
  };
  let last = "";
  return every(3000, async () => {
    let rows: JobRow[];
    try {
      rows = (await api<{ deployments: JobRow[] }>("GET", "deployments")).deployments;
    } catch (e) {
      body.replaceChildren(message((e as Error).message, "error"));
      return;
    }
    if (!rows.length) {
      body.replaceChildren(h("p", {}, "No deployments. Deploy a project folder with app.py from ", link("/new?kind=serve", "New job"), ", or run `aic deploy ./project`."));
      return;
    }
    const now = Date.now();
    const pattern = (await info()).serving || "";
    const out = await Promise.all(
      rows.map(async (j) => {
        const r = j.request!;
        const live = j.status && !TERMINAL.includes(j.status.state);
        let up = 0;
        let last: Figures | null = null;
        if (live) {
          // One failed call leaves its cell saying so, not the whole page "Loading…".
          const [reps, stats] = await Promise.allSettled([
            api<{ replicas: ServingRegistration[] }>("GET", `jobs/${j.job_id}/replicas`),
            api<{ summary: Figures; minutes: ServingMinute[] }>("GET", `jobs/${j.job_id}/stats?minutes=60`),
          ]);
          if (reps.status === "fulfilled") {
            up = reps.value.replicas.filter((x) => x.healthy && Date.parse(x.heartbeat_at) + x.ttl_seconds * 1000 >= now).length;
          }
          if (stats.status === "fulfilled") last = stats.value.summary;
        }
        // The name's address stays across scales and redeploys (as `aic deploy` prints it).
        const addr = (r.name && namedUrl(pattern, session()!.address, r.name)) || deploymentUrl(pattern, j.job_id);
        const rm = h("button", { type: "button", class: "danger", "data-remove": j.job_id, "aria-label": `Remove ${r.name || j.job_id}` }, "Remove");
        rm.hidden = !live;
        rm.addEventListener("click", async () => {
          rm.disabled = true;
          try {
            await api("POST", `jobs/${j.job_id}/cancel`);
            st.say(`Removed ${r.name || j.job_id}: its replicas are stopping; what it did not use is refunded.`, "ok");
          } catch (e) {
            st.say((e as Error).message, "error");
            rm.disabled = false;
          }
        });
        const label = r.name || j.job_id;
        const n = h("input", { type: "number", min: 1, max: 64, value: wanted.get(j.job_id) ?? r.miners, "aria-label": `Replicas for ${label}`, "data-scale-count": j.job_id, class: "narrow" });
        n.addEventListener("input", () => wanted.set(j.job_id, Number(n.value)));
        const scale = h("button", { type: "button", class: "secondary", "data-scale": j.job_id }, isPaid(`scale:${j.job_id}`) ? "Scale (paid)" : "Scale");
        scale.hidden = n.hidden = !live;
        scale.addEventListener("click", () => void scaleTo(j.job_id, label, Number(n.value), scale));
        const priv = r.serving?.private ? h("span", { class: "state", title: "callers need a key: aic deploy key create" }, "private") : "";
        return [
          h("span", {}, link(`/jobs/${j.job_id}`, r.name || j.job_id), " ", priv),
          live ? h("a", { href: addr, class: "addr" }, addr) : h("span", { class: "muted" }, "—"),
          r.serving && (r.serving.min_replicas != null || r.serving.target_concurrency != null)
            ? `${up} (autoscaled ${r.serving.min_replicas ?? 1}–${r.miners})`
            : `${up} of ${r.miners}`,
          h("div", { "data-figures": j.job_id, class: "figures" }, ...(live ? figures(last) : ["—"])),
          j.status ? stateBadge(j.status.state) : "",
          h("span", { class: "row" }, link(`/jobs/${j.job_id}`, "Logs"), n, scale, rm),
        ];
      }),
    );
    // Drawn again only when something changed (a replica count being typed stays).
    const key = JSON.stringify([rows, out.map((o) => [o[2], (o[3] as HTMLElement).textContent])]);
    if (key === last) return;
    last = key;
    body.replaceChildren(table(["Name", "Address", "Live replicas", "Requests, last hour", "State", "Actions"], out));
  });
}
