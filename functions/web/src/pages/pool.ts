import { api } from "../api";
import { h, table } from "../ui";

interface Miner {
  name: string;
  gpus: number;
  free_gpus: number;
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
      table(["Miner", "GPUs", "Free"], g.miners.map((m) => [m.name, m.gpus, m.free_gpus])),
    );
  }
}
