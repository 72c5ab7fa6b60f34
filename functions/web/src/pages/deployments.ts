import { api, info, type JobRow, TERMINAL } from "../api";
import { h, link, message, stateBadge, status, table } from "../ui";
import { every } from "./common";

interface Replica {
  healthy: boolean;
  heartbeat_at: string;
  ttl_seconds: number;
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
  return every(3000, async () => {
    let rows: JobRow[];
    try {
      rows = (await api<{ jobs: JobRow[] }>("GET", "jobs?limit=200")).jobs.filter((j) => j.request?.kind === "serve");
    } catch (e) {
      body.replaceChildren(message((e as Error).message, "error"));
      return;
    }
    if (!rows.length) {
      body.replaceChildren(h("p", {}, "No deployments. Deploy a project folder with app.py from ", link("/new?kind=serve", "New job"), ", or run `aic deploy ./project`."));
      return;
    }
    const now = Date.now();
    const serveUrl = (await info()).serve_url || location.origin;
    const out = await Promise.all(
      rows.map(async (j) => {
        const r = j.request!;
        const live = j.status && !TERMINAL.includes(j.status.state);
        let up = 0;
        if (live) {
          const { replicas } = await api<{ replicas: Replica[] }>("GET", `jobs/${j.job_id}/replicas`);
          up = replicas.filter((x) => x.healthy && Date.parse(x.heartbeat_at) + x.ttl_seconds * 1000 >= now).length;
        }
        const addr = `${serveUrl}/d/${j.job_id}/`;
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
        return [
          link(`/jobs/${j.job_id}`, r.name || j.job_id),
          live ? h("a", { href: addr }, addr) : h("span", { class: "muted" }, "—"),
          `${up} of ${r.miners}`,
          j.status ? stateBadge(j.status.state) : "",
          h("span", { class: "row" }, link(`/jobs/${j.job_id}`, "Logs"), rm),
        ];
      }),
    );
    body.replaceChildren(table(["Name", "Address", "Live replicas", "State", "Actions"], out));
  });
}
