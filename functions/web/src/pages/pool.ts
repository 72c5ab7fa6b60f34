import { api } from "../api";
import { fmtAic, h, table } from "../ui";

interface Miner {
  name: string;
  gpus: number;
  free_gpus: number;
  gpu_model?: string;
  gpu_memory_mb?: number;
  price_per_gpu_hour?: string;
  down?: string;
}

/** A GPU's memory as people read it: `24 GB`, `7.5 GB`. */
function memory(mb?: number): string {
  if (!mb) return "";
  const gb = mb / 1024;
  return Math.abs(gb - Math.round(gb)) < 0.05 ? `${Math.round(gb)} GB` : `${gb.toFixed(1)} GB`;
}

export async function poolPage(root: HTMLElement): Promise<void> {
  document.title = "Pool · aic";
  root.append(h("h1", {}, "Pool"));
  const { gateways } = await api<{ gateways: { name: string; miners: Miner[] }[] }>("GET", "pool");
  for (const g of gateways) {
    const total = g.miners.reduce((s, m) => s + m.gpus, 0);
    const free = g.miners.reduce((s, m) => s + m.free_gpus, 0);
    const avail = g.miners.filter((m) => m.free_gpus > 0).length;
    root.append(
      h("h2", {}, `Gateway ${g.name}`),
      h("p", {}, `Available miners: ${avail} of ${g.miners.length} · free GPUs: ${free} of ${total}`),
      table(
        ["Miner", "GPUs", "Model", "Memory", "Price per GPU-hour", "Free"],
        g.miners.map((m) => [
          m.name,
          m.gpus,
          m.gpu_model ?? "",
          memory(m.gpu_memory_mb),
          m.price_per_gpu_hour ? fmtAic(m.price_per_gpu_hour) : "",
          m.down ? "down" : m.free_gpus,
        ]),
      ),
    );
  }
}
