// Uploads through the gateway's signed URLs: files up to 8 MiB in one PUT bound to their
// SHA-256, bigger ones in 8 MiB parts (multipart), four transfers at a time, with progress.

import { api, sign, type SignedUrl } from "./api";

export const PART = 8 * 1024 * 1024;
const AT_ONCE = 4;

export interface Item {
  key: string;
  file: Blob;
}

export async function sha256Hex(b: Blob | ArrayBuffer): Promise<string> {
  const buf = b instanceof Blob ? await b.arrayBuffer() : b;
  const d = await crypto.subtle.digest("SHA-256", buf);
  return Array.from(new Uint8Array(d), (x) => x.toString(16).padStart(2, "0")).join("");
}

/// One PUT with upload progress (fetch reports none); resolves with the response's ETag.
function put(u: SignedUrl | { url: string; headers: Record<string, string> }, body: Blob, progress: (n: number) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("PUT", u.url);
    for (const [k, v] of Object.entries(u.headers || {})) x.setRequestHeader(k, v);
    x.upload.onprogress = (e) => progress(e.loaded);
    x.onload = () => {
      if (x.status >= 200 && x.status < 300) {
        progress(body.size);
        resolve(x.getResponseHeader("etag") || "");
      } else if (x.status === 412) reject(new Error("it is there already (written once)"));
      else reject(new Error(`storage answered ${x.status}`));
    };
    x.onerror = () => reject(new Error("the upload was cut off; try again"));
    x.send(body);
  });
}

async function pool<T>(items: T[], n: number, f: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) await f(items[next++]);
    }),
  );
}

/// Uploads every item; `progress(sent, total)` as bytes go.
export async function uploadAll(items: Item[], progress: (sent: number, total: number) => void, create = false): Promise<void> {
  const total = items.reduce((s, i) => s + i.file.size, 0);
  const done = new Map<string, number>();
  const report = (key: string, n: number) => {
    done.set(key, n);
    progress(Array.from(done.values()).reduce((a, b) => a + b, 0), total);
  };
  const small = items.filter((i) => i.file.size <= PART);
  const big = items.filter((i) => i.file.size > PART);
  // Small files: signed in batches, bound to their digests.
  for (let b = 0; b < small.length; b += 128) {
    const batch = small.slice(b, b + 128);
    const sums = await Promise.all(batch.map((i) => sha256Hex(i.file)));
    const urls = await sign(batch.map((i, j) => ({ method: "PUT", key: i.key, size: i.file.size, sha256: sums[j], create })));
    await pool(
      batch.map((i, j) => [i, urls[j]] as const),
      AT_ONCE,
      async ([i, u]) => {
        try {
          await put(u, i.file, (n) => report(i.key, n));
        } catch (e) {
          throw new Error(`${i.key.split("/").slice(4).join("/") || i.key}: ${(e as Error).message}`);
        }
      },
    );
  }
  for (const i of big) await multipart(i, (n) => report(i.key, n));
}

async function multipart(i: Item, progress: (n: number) => void): Promise<void> {
  const { upload_id } = await api<{ upload_id: string }>("POST", "multipart", { action: "create", key: i.key });
  const parts = Math.ceil(i.file.size / PART);
  const etags: string[] = new Array(parts);
  const sent = new Array(parts).fill(0);
  try {
    await pool(
      Array.from({ length: parts }, (_, n) => n),
      AT_ONCE,
      async (n) => {
        const body = i.file.slice(n * PART, (n + 1) * PART);
        // The part's size: its URL binds it (a pool's storage quota counts it).
        const { url } = await api<{ url: string }>("POST", "multipart", { action: "part", key: i.key, upload_id, part: n, size: body.size });
        etags[n] = await put({ url, headers: {} }, body, (b) => {
          sent[n] = b;
          progress(sent.reduce((a, c) => a + c, 0));
        });
        if (!etags[n]) throw new Error("storage gave no ETag for a part (the bucket's CORS must expose ETag)");
      },
    );
    await api("POST", "multipart", { action: "complete", key: i.key, upload_id, parts: etags });
  } catch (e) {
    await api("POST", "multipart", { action: "abort", key: i.key, upload_id }).catch(() => undefined);
    throw e;
  }
}

/// Reads a signed GET as a download (the browser saves it under `name`).
export async function download(key: string, name: string): Promise<void> {
  const [u] = await sign([{ method: "GET", key }]);
  const r = await fetch(u.url);
  if (!r.ok) throw new Error(`${name}: storage answered ${r.status}`);
  const blob = await r.blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}
