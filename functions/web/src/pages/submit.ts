// Paying for, signing and uploading a job request, shared by New job and a deployment's
// scale: the pool writes the typed data (`POST /v1/draft`), the wallet pays (an allowance and
// a deposit, or a transfer) and signs, the code goes up, then the request (create-only).
// One payment per job: the job (its id) is kept in this browser from before the wallet is
// asked, and the pool keeps the payment itself (`/v1/payments/<job>`) from then on, following
// it through a speed-up or a cancel in the wallet. Trying again — after a reload, a refusal,
// a payment slow to be mined — follows that payment, and pays anew only once the chain says
// the first was cancelled or never sent.

import { refreshAccount } from "../nav";
import { api, info, session, userPrefix } from "../api";
import { uploadAll, type Item } from "../upload";
import { fmtAic, fmtBytes, pickWallet } from "../ui";
import { account, balance, ensureChain, mined, send, signTyped, wallet } from "../wallet";

export interface Draft {
  quote: { total: string; gpu_hours: number; display: string; price?: string };
  payment: { to: string; data: string; approve?: { to: string; data: string } | null } | null;
  typed_data: unknown;
}

export interface CodeFile {
  rel: string;
  file: Blob;
}

export type Req = Record<string, unknown>;

/// A job whose payment was asked of the wallet (and perhaps made) but that was not submitted
/// is kept in this browser (localStorage, per wallet), so that a reload or a closed tab does
/// not strand its deposit: its request (with the payment once mined) is kept; the files are
/// picked again and must have the same digest.
function storageKey(key: string): string {
  return `aic.paid.${session()?.address || ""}.${key}`;
}

export function paidRequest(key: string): Req | null {
  try {
    return JSON.parse(localStorage.getItem(storageKey(key)) || "null") as Req | null;
  } catch {
    return null;
  }
}

function keep(key: string, req: Req): void {
  localStorage.setItem(storageKey(key), JSON.stringify(req));
}

/// Whether the job started as `key` is paid and waits for its signature.
export function isPaid(key: string): boolean {
  return !!paidRequest(key)?.payment;
}

/// Forgets a kept job (a deposit made stays in the escrow; its owner can reclaim it later).
export function forgetPaid(key: string): void {
  localStorage.removeItem(storageKey(key));
}

interface PaymentState {
  state: "ready" | "mined" | "pending" | "cancelled" | "unsent" | "none";
  tx?: string;
}

/// Follows the payment the pool keeps for `job` until the chain settles it: its mined hash
/// (a speed-up's, if it was sped up), or `null` when it was cancelled or never sent.
async function follow(job: string, say: (text: string) => void, seconds = 180): Promise<string | null> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const s = await api<PaymentState>("GET", `payments/${job}`);
    if (s.state === "mined") return s.tx!;
    if (s.state !== "pending") return null;
    if (Date.now() > deadline) {
      throw new Error(`Your payment ${s.tx || "sent from your wallet"} is not mined yet: speed it up in your wallet if it is slow, then try again; it will not be sent twice.`);
    }
    say(`Your payment ${s.tx || "sent from your wallet"} is not mined yet; waiting for the chain (you may speed it up in your wallet)…`);
  }
}

/// Pays for `req` (unless paid under `key` already), signs it and uploads `files` and the
/// request; returns the job id. `say` tells the user what is happening.
export async function submit(
  key: string,
  fresh: () => Promise<{ req: Req; files: CodeFile[] }>,
  say: (text: string) => void,
  progress: (sent: number, total: number) => void,
): Promise<string> {
  const me = session()!.address;
  const i = await info();
  const w = await wallet(pickWallet);
  const p = w.provider;
  const from = await account(p);
  if (from !== me) throw new Error(`Your wallet's account is ${from}, but you are signed in as ${me}: select ${me} in your wallet, or sign in again.`);
  await ensureChain(p, i.chain_id, i.chain);
  let job = await fresh();
  const kept = paidRequest(key);
  if (kept) {
    if (kept.code_digest !== job.req.code_digest) {
      throw new Error(
        `You started paying for job ${kept.job_id} with other code: pick the same script or folder to submit it (or discard it; a deposit made can be reclaimed from the escrow).`,
      );
    }
    job = { req: kept, files: job.files };
    if (kept.payment) say("This job is paid already; asking your wallet to sign it…");
  }
  if (!job.req.payment) {
    const id = job.req.job_id as string;
    const d = await api<Draft>("POST", "draft", job.req);
    if (d.payment) {
      // From here the job keeps its id: a retry finds its payment.
      keep(key, job.req);
      let tx = kept ? await follow(id, say) : null;
      if (!tx) {
        const have = await balance(p, i.chain!.token, me);
        if (have < BigInt(d.quote.total)) {
          throw new Error(`You have ${fmtAic(have)}; this job costs ${d.quote.display}. Get more AIC, or ask for fewer GPUs or hours.`);
        }
        if (d.payment.approve) {
          say(`Allow the pool's escrow to take ${d.quote.display}: confirm in your wallet…`);
          await mined(p, await send(p, from, d.payment.approve.to, d.payment.approve.data, "allowing the payment"));
        }
        // The pool keeps the payment from before the wallet is asked; one already made is
        // followed instead of sending another.
        const asked = await api<PaymentState>("POST", `payments/${id}`, { to: d.payment.to, data: d.payment.data });
        if (asked.state === "ready") {
          say(`Pay ${d.quote.display}: confirm in your wallet…`);
          const sent = await send(p, from, d.payment.to, d.payment.data, "the payment");
          await api("POST", `payments/${id}/tx`, { tx: sent });
          say(`Paid in ${sent}; waiting for the chain…`);
        }
        tx = await follow(id, say);
        if (!tx) throw new Error("The payment was cancelled in your wallet: nothing was paid. Press the button again to pay.");
      }
      job.req.payment = { chain_id: i.chain_id, tx };
      keep(key, job.req);
      refreshAccount();
    }
  }
  const signed = await api<Draft>("POST", "draft", job.req);
  say("Sign the job request in your wallet…");
  job.req.signature = await signTyped(p, from, signed.typed_data);
  const id = job.req.job_id as string;
  const base = `${userPrefix(me)}jobs/${id}/`;
  const items: Item[] = job.files.map((f) => ({ key: `${base}code/${f.rel}`, file: f.file }));
  await uploadAll(items, (sent, total) => {
    progress(sent, total);
    say(`Uploading the code: ${fmtBytes(sent)} of ${fmtBytes(total)}…`);
  });
  const body = new Blob([JSON.stringify(job.req)], { type: "application/json" });
  await uploadAll([{ key: `${base}request.json`, file: body }], () => undefined, true);
  forgetPaid(key);
  return id;
}
