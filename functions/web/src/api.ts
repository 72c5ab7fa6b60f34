// The gateway API of this host (`/v1/…`), with the session as a bearer token. The token is
// kept in localStorage and sent in the Authorization header by this code only: it is never
// a cookie, so no other site's page can make the browser send it.

import type { JobRequest } from "./types/request";
import type { Listing } from "./types/listing";
import type { SignItem } from "./types/sign-request";
import type { SignedUrl, SignResponse } from "./types/sign-response";
import type { StatusRecord } from "./types/status";

export type { JobRequest } from "./types/request";
export type { ListedObject } from "./types/listing";
export type { ServingRegistration } from "./types/serving";
export type { GpuSample } from "./types/gpu-sample";
export type { Settlement } from "./types/settlement";
export type { SignedUrl } from "./types/sign-response";
export type { StatusRecord } from "./types/status";

export interface Session {
  token: string;
  address: string;
  expires_at: string;
}

export interface ChainInfo {
  rpc_url: string;
  chain_id: number;
  token: string;
  treasury: string;
  price_per_gpu_hour: string;
  escrow?: string;
}

export interface Info {
  bucket: string;
  domain: string;
  chain_id: number;
  chain: ChainInfo | null;
  free: boolean;
  max_put: number;
  /// Where deployments answer, each at its own origin: `http://*.localhost:8800`.
  serving?: string | null;
}

const KEY = "aic.session";

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

export function session(): Session | null {
  try {
    const s = JSON.parse(localStorage.getItem(KEY) || "null") as Session | null;
    if (s && new Date(s.expires_at).getTime() > Date.now() + 5000) return s;
  } catch {
    /* a damaged entry is no session */
  }
  return null;
}

export function setSession(s: Session | null): void {
  if (s) localStorage.setItem(KEY, JSON.stringify(s));
  else localStorage.removeItem(KEY);
  window.dispatchEvent(new Event("aic-session"));
}

export async function api<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  const s = session();
  if (s) headers["authorization"] = `Bearer ${s.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let r: Response;
  try {
    r = await fetch(`/v1/${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, "The pool did not answer; check your connection and try again.");
  }
  const text = await r.text();
  let v: unknown = null;
  try {
    v = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON */
  }
  if (!r.ok) {
    const why = (v as { error?: string } | null)?.error || `the pool answered ${r.status}`;
    if (r.status === 401 && s) setSession(null);
    throw new ApiError(r.status, why);
  }
  return v as T;
}

let infoCache: Promise<Info> | null = null;
export function info(): Promise<Info> {
  if (!infoCache) infoCache = api<Info>("GET", "info").catch((e) => ((infoCache = null), Promise.reject(e)));
  return infoCache;
}



/// A row of `GET /v1/jobs` (`aic_core::status::Listed`).
export interface JobRow {
  job_id: string;
  status: StatusRecord | null;
  request: JobRequest | null;
}




export const TERMINAL = ["succeeded", "failed", "cancelled", "timed_out", "rejected"];

/// Every object under `prefix` (the gateway lists in pages; a page ends where it stopped).
export async function listAll(prefix: string): Promise<Listing["objects"]> {
  const out: Listing["objects"] = [];
  let offset: string | undefined;
  for (;;) {
    const q = new URLSearchParams({ prefix });
    if (offset) q.set("offset", offset);
    const r = await api<Listing>("GET", `objects?${q}`);
    out.push(...r.objects);
    if (r.objects.length < 1000) return out;
    offset = r.objects[r.objects.length - 1].key;
  }
}

export async function sign(items: SignItem[]): Promise<SignedUrl[]> {
  const r = await api<SignResponse>("POST", "sign", { items });
  return r.urls;
}

export function userPrefix(address: string): string {
  return `users/${address.toLowerCase()}/`;
}
