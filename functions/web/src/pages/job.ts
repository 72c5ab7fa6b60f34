import { api, ApiError, info, type JobRequest, listAll, session, sign, type Settlement, type StatusRecord, TERMINAL } from "../api";
import { deploymentUrl, namedUrl } from "../origin";
import { download } from "../upload";
import { fmtAic, fmtBytes, fmtDuration, fmtTime, h, message, stateBadge, status, table } from "../ui";
import { every } from "./common";
import { gpuUse } from "./gpuuse";

interface JobAnswer {
  job_id: string;
  status: StatusRecord | null;
  history: StatusRecord[];
  settlements: Settlement[];
}


const LOG_LIMIT = 400_000;

export async function jobPage(root: HTMLElement, [id]: string[]): Promise<() => void> {
  document.title = `Job ${id} · aic`;
  let job: JobAnswer;
  try {
    job = await api<JobAnswer>("GET", `jobs/${id}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      root.append(h("h1", {}, "No such job"), message(e.message, "error"));
      return () => undefined;
    }
    throw e;
  }
  const me = session()!.address;
  const prefix = `users/${me}/jobs/${id}/`;
  const [reqUrl] = await sign([{ method: "GET", key: `${prefix}request.json` }]);
  const req: JobRequest | null = await fetch(reqUrl.url).then((r) => (r.ok ? r.json() : null)).catch(() => null);

  const title = h("h1", {}, req?.name || req?.entrypoint || "Job", " ", h("span", { id: "state" }));
  const st = status();
  const cancel = h("button", { type: "button", class: "danger", id: "cancel" }, "Cancel");
  const facts = h("dl", { class: "facts" });
  const bar = h("progress", { id: "progress", max: 1, value: 0, "aria-label": "Progress", hidden: true });
  const barText = h("span", { class: "muted", id: "progress-text" });
  const timeline = h("ol", { class: "timeline", id: "timeline" });
  const log = h("pre", { class: "log", id: "log", tabindex: 0, "aria-label": "Log" });
  const outputs = h("div", { id: "outputs" }, h("p", { class: "muted" }, "None yet."));
  const money = h("div", { id: "money" });
  const serving = h("div", { id: "serving" });
  const use = gpuUse(id);
  root.append(
    title,
    h("p", { class: "muted" }, `Job ${id}`),
    st.el,
    h("div", { class: "card" }, facts, h("div", { class: "row" }, bar, barText), h("div", { class: "row" }, cancel)),
    serving,
    h("h2", {}, "Timeline"),
    timeline,
    h("h2", {}, "Log"),
    log,
    h("h2", {}, "GPU use"),
    use.el,
    h("h2", {}, "Outputs"),
    outputs,
    h("h2", {}, "Payment"),
    money,
  );
  const fact = (k: string, v: string | Node) => facts.append(h("dt", {}, k), h("dd", {}, v));
  if (req) {
    fact("Kind", req.kind === "serve" ? "deployment (serve)" : "training");
    fact(req.kind === "serve" ? "Replicas × GPUs" : "Miners × GPUs", `${req.miners} × ${req.gpus_per_miner}`);
    // Absent in a request: the plain command (`Launcher::Command`, the Rust default).
    fact("Launcher", req.launcher ?? "command");
    fact("Program", req.entrypoint);
    if (req.data) fact("Dataset", req.data);
    fact("Hours paid", String(req.max_hours));
  }
  const execTime = h("span", { id: "exec-time" });
  fact("Execution time", execTime);

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      const r = await api<{ state: string; already: boolean }>("POST", `jobs/${id}/cancel`);
      st.say(r.already ? "It was cancelled already." : "Cancelled: its allocations are being stopped.", "ok");
    } catch (e) {
      st.say((e as Error).message, "error");
      cancel.disabled = false;
    }
  });

  let after: string | undefined;
  let logBytes = 0;
  let ended = false;
  let lastHistory = "";
  const showStatus = (j: JobAnswer) => {
    const h0 = JSON.stringify([j.history, j.settlements]);
    if (h0 === lastHistory) return;
    lastHistory = h0;
    const s = j.status;
    title.querySelector("#state")!.replaceChildren(s ? stateBadge(s.state) : "");
    ended = !!s && TERMINAL.includes(s.state);
    cancel.hidden = ended;
    timeline.replaceChildren(
      ...j.history.map((r) =>
        h(
          "li",
          {},
          stateBadge(r.state),
          " ",
          h("time", { datetime: r.at }, fmtTime(r.at)),
          r.run ? ` · run ${r.run + 1}` : "",
          ` · ${r.by}`,
          r.reason ? h("div", { class: "wrap" }, r.reason) : null,
          r.detail?.log_tail ? h("pre", { class: "log" }, r.detail.log_tail) : null,
        ),
      ),
    );
    const wall = [...j.history].reverse().find((r) => r.detail?.wall_seconds != null)?.detail?.wall_seconds;
    const started = j.history.find((r) => r.state === "running");
    execTime.textContent =
      wall != null ? fmtDuration(wall) : started && !ended ? `${fmtDuration((Date.now() - Date.parse(started.at)) / 1000)} so far` : "";
    money.replaceChildren(
      j.settlements.length
        ? table(
            ["Run", "Paid", "Used", "Refunded", "GPU time", "Settled"],
            j.settlements.map((x) => [x.run + 1, fmtAic(x.paid), fmtAic(x.charged), fmtAic(x.refunded), fmtDuration(x.gpu_seconds), fmtTime(x.at)]),
          )
        : h("p", { class: "muted" }, req?.payment ? `Paid in transaction ${req.payment.tx}; settled once the job ends.` : "Nothing paid (a free pool)."),
    );
  };
  showStatus(job);

  const addLines = (text: string) => {
    const frag = document.createDocumentFragment();
    for (const line of text.split("\n")) {
      if (line === "") continue;
      const p = /^AIC_PROGRESS (\d+)\/(\d+)\s*$/.exec(line);
      if (p) {
        bar.hidden = false;
        bar.max = Number(p[2]) || 1;
        bar.value = Number(p[1]);
        barText.textContent = `${p[1]} / ${p[2]}`;
        continue;
      }
      const m = /^(\[rank \d+\])(.*)$/.exec(line);
      if (m) frag.append(h("span", { class: "rank" }, m[1]), m[2] + "\n");
      else frag.append(line + "\n");
    }
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
    log.append(frag);
    logBytes += text.length;
    while (logBytes > LOG_LIMIT && log.firstChild) {
      logBytes -= (log.firstChild.textContent || "").length;
      log.firstChild.remove();
    }
    if (atEnd) log.scrollTop = log.scrollHeight;
  };

  // Where the page is in each allocation's log: [chunk, byte offset]. Lines come live from
  // the host (`/live`), and from the stored chunks (`logs/<alloc>/<n>.log`) for what was
  // stored before, or for all when the pool relays no live logs.
  const at = new Map<number, [number, number]>();
  const chunkKey = (a: number, n: number) => `${prefix}logs/${a}/${String(n).padStart(8, "0")}.log`;
  const showChunk = (key: string, text: string) => {
    const m = /logs\/(\d+)\/(\d+)\.log$/.exec(key);
    if (!m) return;
    const [a, n] = [Number(m[1]), Number(m[2])];
    const [c, o] = at.get(a) ?? [0, 0];
    if (n < c) return;
    addLines(n === c ? sliceBytes(text, o) : text);
    at.set(a, [n + 1, 0]);
  };
  // Stored chunks: of every allocation, or of one before chunk `upto`.
  const readStored = async (only?: number, upto?: number) => {
    let from = only === undefined ? after : (at.get(only)?.[0] ?? 0) === 0 ? `${prefix}logs/${only}/` : chunkKey(only, at.get(only)![0] - 1);
    for (let i = 0; i < 20; i++) {
      const q = from ? `?after=${encodeURIComponent(from)}` : "";
      const { chunks } = await api<{ chunks: { key: string; text: string }[] }>("GET", `jobs/${id}/logs${q}`);
      if (chunks.length === 0) return;
      for (const c of chunks) {
        if (only !== undefined) {
          const m = /logs\/(\d+)\/(\d+)\.log$/.exec(c.key);
          if (!m || Number(m[1]) !== only || (upto !== undefined && Number(m[2]) >= upto)) return;
        }
        showChunk(c.key, c.text);
      }
      from = chunks[chunks.length - 1].key;
      if (only === undefined) after = from;
    }
  };
  const readLogs = () => readStored();

  let live = true;
  let liveStatus = 0;
  let statusMoved = false;
  let stopped = false;
  const liveLoop = async () => {
    while (!stopped && live && !ended) {
      const started = Date.now();
      const from = [...at].map(([a, [c, o]]) => `${a}.${c}.${o}`).join(",");
      let n: { allocs: { alloc: number; chunk: number; offset: number; text: string }[]; status: number };
      try {
        n = await api("GET", `jobs/${id}/live?from=${from}&status=${liveStatus}&wait=20000`);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) live = false;
        else await pause(2000);
        continue;
      }
      if (stopped) return;
      for (const p of n.allocs) {
        if (p.chunk < (at.get(p.alloc)?.[0] ?? 0)) continue;
        if (p.chunk > (at.get(p.alloc)?.[0] ?? 0)) {
          await readStored(p.alloc, p.chunk);
          at.set(p.alloc, [p.chunk, 0]);
        }
        const o = at.get(p.alloc)?.[1] ?? 0;
        const end = p.offset + byteLength(p.text);
        if (end <= o) continue;
        addLines(sliceBytes(p.text, Math.max(0, o - p.offset)));
        at.set(p.alloc, [p.chunk, end]);
      }
      if (n.status !== liveStatus) {
        liveStatus = n.status;
        statusMoved = true;
        tick();
      }
      await pause(100 - (Date.now() - started));
    }
  };

  let outputsSeen = "";
  const readOutputs = async () => {
    const list = await listAll(`${prefix}output/`);
    const k = JSON.stringify(list.map((o) => [o.key, o.size]));
    if (k === outputsSeen) return;
    outputsSeen = k;
    if (list.length === 0) {
      outputs.replaceChildren(h("p", { class: "muted" }, "None yet."));
      return;
    }
    outputs.replaceChildren(
      table(
        ["File", "Size", "Written", "Actions"],
        list.map((o) => {
          const name = o.key.slice(`${prefix}output/`.length);
          const b = h("button", { type: "button", class: "secondary", "data-key": name, "aria-label": `Download ${name}` }, "Download");
          b.addEventListener("click", () => download(o.key, name.split("/").pop() || name).catch((e) => st.say((e as Error).message, "error")));
          return [name, fmtBytes(o.size), fmtTime(o.last_modified), b];
        }),
      ),
    );
  };

  const readServing = async () => {
    if (req?.kind !== "serve") return;
    const { replicas } = await api<{ replicas: { alloc: number; host: string; port: number; healthy: boolean; heartbeat_at: string; ttl_seconds: number }[] }>(
      "GET",
      `jobs/${id}/replicas`,
    );
    const now = Date.now();
    const live = replicas.filter((r) => r.healthy && Date.parse(r.heartbeat_at) + r.ttl_seconds * 1000 >= now);
    const pattern = (await info()).serving;
    if (!pattern) return;
    const addr = deploymentUrl(pattern, id);
    const named = req.name ? namedUrl(pattern, me, req.name) : null;
    serving.replaceChildren(
      h(
        "div",
        { class: "card" },
        named ? h("p", {}, "API address: ", h("a", { href: named, id: "named-link" }, named)) : null,
        h("p", {}, named ? "This version alone: " : "Address: ", h("a", { href: addr, id: "address-link" }, addr)),
        h("p", { id: "replicas" }, `Live replicas: ${live.length} of ${req.miners}`),
      ),
    );
  };

  let slow = 0;
  let endedAt = 0;
  let busy = false;
  // Status, outputs and replicas: every second without a live feed; with one, when it tells
  // of a status move, else every 5 s.
  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      const wasEnded = ended;
      const n = slow++;
      if (!live) await readLogs();
      if (!live || statusMoved || n % 5 === 0) {
        statusMoved = false;
        showStatus(await api<JobAnswer>("GET", `jobs/${id}`));
      }
      if (n % 3 === 0 || (ended && !wasEnded)) {
        await readOutputs();
        await readServing();
      }
      // Every 2 s while it runs, and for 20 s after it ended: a rank's last samples are
      // stored as its worker stops, after the job's end is written.
      if (ended && !wasEnded) endedAt = n;
      if (n % 2 === 0 && (!ended || n - endedAt <= 20)) await use.read();
      if (ended && !wasEnded) await readLogs();
    } finally {
      busy = false;
    }
  };
  const stopTimer = every(1000, tick);
  if (ended) await Promise.all([readLogs(), use.read()]);
  else void liveLoop();
  return () => {
    stopped = true;
    stopTimer();
  };
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const utf8 = new TextEncoder();
const byteLength = (s: string) => utf8.encode(s).length;
/** `s` from byte `from` on (offsets in the log are bytes of UTF-8). */
const sliceBytes = (s: string, from: number) => (from <= 0 ? s : new TextDecoder().decode(utf8.encode(s).slice(from)));
