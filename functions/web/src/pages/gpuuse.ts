// A job's GPU use: the samples its workers ship (`metrics/<alloc>/<n>.jsonl`, a GpuSample a
// line), read from the stored chunks and from what the host holds live, drawn over time.
import { api, ApiError, type GpuSample } from "../api";
import { h, table } from "../ui";

const SVG = "http://www.w3.org/2000/svg";
// A GPU's colour: class `c0`…`c7` (app.css; the page's CSP takes no inline styles).
const COLOURS = 8;

export interface GpuUse {
  el: HTMLElement;
  /** Reads what is new and redraws. */
  read: () => Promise<void>;
}

export function gpuUse(id: string): GpuUse {
  const el = h("div", { id: "gpu-use" }, h("p", { class: "muted" }, "No samples yet."));
  const seen = new Map<string, GpuSample>();
  let after: string | undefined;
  let live = true;
  const take = (text: string) => {
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      try {
        const s = JSON.parse(line) as GpuSample;
        seen.set(`${s.alloc}|${s.at}`, s);
      } catch {
        // Not a sample (a cut line): skipped.
      }
    }
  };
  // Never throws: the page's other reads go on whatever happens here.
  const read = () => readAll().catch(() => undefined);
  const readAll = async () => {
    for (let i = 0; i < 20; i++) {
      const q = after ? `&after=${encodeURIComponent(after)}` : "";
      const { chunks } = await api<{ chunks: { key: string; text: string }[] }>("GET", `jobs/${id}/logs?stream=metrics${q}`);
      if (chunks.length === 0) break;
      chunks.forEach((c) => take(c.text));
      after = chunks[chunks.length - 1].key;
    }
    if (live) {
      try {
        const n = await api<{ allocs: { text: string }[]; stream?: string }>("GET", `jobs/${id}/live?stream=metrics&wait=0`);
        // A host that relays only logs answers with the log: none of it is a sample.
        if (n.stream === "metrics") n.allocs.forEach((p) => take(p.text));
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) live = false;
      }
    }
    draw();
  };
  const draw = () => {
    const all = [...seen.values()].sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
    if (all.length === 0) return;
    const series = new Map<string, { t: number; util: number; mem: number; total?: number | null }[]>();
    const order = new Map<string, [number, number, string]>();
    let maxMem = 1;
    for (const s of all)
      for (const g of s.gpus) {
        const k = `alloc ${s.alloc} · GPU ${g.gpu}`;
        if (!series.has(k)) {
          series.set(k, []);
          order.set(k, [s.alloc, Number(g.gpu), g.gpu]);
        }
        series.get(k)!.push({ t: Date.parse(s.at), util: g.util_pct, mem: g.mem_used_mib, total: g.mem_total_mib });
        maxMem = Math.max(maxMem, g.mem_used_mib, g.mem_total_mib ?? 0);
      }
    const standIn = all.some((s) => s.source === "stand-in");
    const [t0, t1] = [Date.parse(all[0].at), Date.parse(all[all.length - 1].at)];
    // By allocation, then GPU (as numbers where they are).
    const keys = [...series.keys()].sort((a, b) => {
      const [x, y] = [order.get(a)!, order.get(b)!];
      return x[0] - y[0] || x[1] - y[1] || x[2].localeCompare(y[2]);
    });
    el.replaceChildren(
      standIn ? h("p", { class: "muted", id: "gpu-stand-in" }, "Simulated miners: the program's CPU use stands in for GPU utilization, its memory for GPU memory.") : "",
      h("div", { class: "charts" }, chart("Utilization %", series, keys, t0, t1, 100, (p) => p.util), chart("Memory MiB", series, keys, t0, t1, maxMem, (p) => p.mem)),
      table(
        ["GPU", "Utilization, average", "Utilization, last", "Memory, last"],
        keys.map((k) => {
          const ps = series.get(k)!;
          const last = ps[ps.length - 1];
          const avg = ps.reduce((a, p) => a + p.util, 0) / ps.length;
          return [k, `${avg.toFixed(0)}%`, `${last.util.toFixed(0)}%`, last.total ? `${last.mem} / ${last.total} MiB` : `${last.mem} MiB`];
        }),
        `${all.length} sample${all.length === 1 ? "" : "s"}`,
      ),
    );
  };
  return { el, read };
}

type Point = { t: number; util: number; mem: number };

/** A line per GPU over time, `top` at the top. */
function chart(title: string, series: Map<string, Point[]>, keys: string[], t0: number, t1: number, top: number, y: (p: Point) => number): Element {
  const [w, hgt, pad] = [480, 160, 4];
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title} over time`);
  svg.setAttribute("class", "chart");
  const x = (t: number) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (w - 2 * pad);
  const yy = (v: number) => hgt - pad - (Math.min(v, top) / top) * (hgt - 2 * pad);
  keys.forEach((k, i) => {
    const line = document.createElementNS(SVG, "polyline");
    // At most a point per pixel column or so: a day's samples draw as fast as a minute's.
    const ps = series.get(k)!;
    const step = Math.max(1, Math.ceil(ps.length / w));
    const shown = ps.filter((_, j) => j % step === 0 || j === ps.length - 1);
    line.setAttribute("points", shown.map((p) => `${x(p.t).toFixed(1)},${yy(y(p)).toFixed(1)}`).join(" "));
    line.setAttribute("class", `c${i % COLOURS}`);
    line.setAttribute("data-gpu", k);
    const tip = document.createElementNS(SVG, "title");
    tip.textContent = k;
    line.append(tip);
    // The last sample as a dot: a job of one sample shows too.
    const last = series.get(k)!.at(-1)!;
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", x(last.t).toFixed(1));
    dot.setAttribute("cy", yy(y(last)).toFixed(1));
    dot.setAttribute("r", "3");
    dot.setAttribute("class", `c${i % COLOURS}`);
    svg.append(line, dot);
  });
  const legend = h("ul", { class: "legend" }, ...keys.map((k, i) => h("li", { class: `c${i % COLOURS}` }, k)));
  return h("figure", { class: "chart" }, h("figcaption", {}, `${title} (top: ${top.toFixed(0)})`), svg, legend);
}
