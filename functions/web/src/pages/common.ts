import { info, type JobRequest } from "../api";

/// What a request costs at the pool's price (as quoted: hours rounded up to a thousandth).
export async function cost(r: JobRequest | null): Promise<bigint | null> {
  if (!r) return null;
  const i = await info();
  if (!i.chain || i.free) return 0n;
  const price = BigInt(i.chain.price_per_gpu_hour || "0");
  const milli = BigInt(Math.ceil(r.max_hours * 1000)) * BigInt(r.miners) * BigInt(r.gpus_per_miner);
  return (price * milli + 999n) / 1000n;
}

/// Calls `f` now and every `ms` while the page is shown; returns how to stop.
export function every(ms: number, f: () => Promise<unknown>): () => void {
  let stopped = false;
  let timer: number | undefined;
  const tick = async () => {
    try {
      await f();
    } catch {
      /* shown by the page; tried again next tick */
    }
    if (!stopped) timer = window.setTimeout(tick, ms);
  };
  void tick();
  return () => {
    stopped = true;
    if (timer !== undefined) clearTimeout(timer);
  };
}
