// The wallet, through EIP-1193 (`window.ethereum`) and EIP-6963 (wallets announcing
// themselves): connect, the pool's chain (switched to, or added), Sign-In with Ethereum,
// the AIC balance, adding the token to the wallet, payments and typed-data signatures.
// Every refusal becomes one sentence: what happened and what to do.

import { api, info, setSession, type ChainInfo, type Session } from "./api";

export interface Eip1193 {
  request(args: { method: string; params?: unknown }): Promise<any>;
  on?(event: string, cb: (arg: any) => void): void;
  removeListener?(event: string, cb: (arg: any) => void): void;
}

export interface Announced {
  info: { uuid: string; name: string; icon?: string; rdns?: string };
  provider: Eip1193;
}

declare global {
  interface Window {
    ethereum?: Eip1193;
  }
}

/// The wallets in this browser: those announcing themselves (EIP-6963), else window.ethereum.
export async function discover(): Promise<Announced[]> {
  const found: Announced[] = [];
  const onAnnounce = (e: Event) => {
    const d = (e as CustomEvent<Announced>).detail;
    if (d && d.provider && !found.some((w) => w.info.uuid === d.info.uuid)) found.push(d);
  };
  window.addEventListener("eip6963:announceProvider", onAnnounce);
  window.dispatchEvent(new Event("eip6963:requestProvider"));
  await new Promise((r) => setTimeout(r, 150));
  window.removeEventListener("eip6963:announceProvider", onAnnounce);
  if (found.length === 0 && window.ethereum) {
    found.push({ info: { uuid: "window.ethereum", name: "your wallet" }, provider: window.ethereum });
  }
  return found;
}

/// A wallet's refusal, as a sentence.
export function refusal(e: unknown, doing: string): Error {
  const err = e as { code?: number; message?: string } | null;
  const code = err?.code;
  if (code === 4001) return new Error(`You declined ${doing} in your wallet. Try again when you are ready.`);
  if (code === 4100) return new Error(`Your wallet did not allow ${doing} for this account: select your account in the wallet, then try again.`);
  if (code === -32002) return new Error(`Your wallet already has a request waiting: open it, answer it, then try again.`);
  return new Error(`${doing[0].toUpperCase()}${doing.slice(1)} failed in the wallet: ${err?.message || String(e)}`);
}

let chosen: Announced | null = null;
let choosing: Promise<Announced> | null = null;

/// The wallet to use: the only one, or the one the user picks (`pick` shows the choice).
export async function wallet(pick: (list: Announced[]) => Promise<Announced>): Promise<Announced> {
  if (chosen) return chosen;
  if (!choosing) {
    choosing = (async () => {
      const list = await discover();
      if (list.length === 0) throw new Error("No wallet found in this browser: install MetaMask, then reload this page.");
      const w = list.length === 1 ? list[0] : await pick(list);
      chosen = w;
      return w;
    })().finally(() => (choosing = null));
  }
  return choosing;
}

export async function account(p: Eip1193): Promise<string> {
  let accounts: string[];
  try {
    accounts = await p.request({ method: "eth_requestAccounts" });
  } catch (e) {
    throw refusal(e, "connecting this page");
  }
  if (!accounts || !accounts[0]) throw new Error("Your wallet shared no account: unlock it, then try again.");
  return accounts[0].toLowerCase();
}

export function chainName(id: number): string {
  return id === 31337 ? "aic dev chain" : `chain ${id}`;
}

/// The wallet on the pool's chain: switched to it, or the chain added when the wallet does
/// not know it (EIP-3085), with the pool's RPC URL.
export async function ensureChain(p: Eip1193, chainId: number, chain: ChainInfo | null): Promise<void> {
  const current = parseInt(await p.request({ method: "eth_chainId" }), 16);
  if (current === chainId) return;
  const hex = "0x" + chainId.toString(16);
  const name = chainName(chainId);
  try {
    await p.request({ method: "wallet_switchEthereumChain", params: [{ chainId: hex }] });
  } catch (e) {
    const err = e as { code?: number; data?: { originalError?: { code?: number } } };
    const unknown = err?.code === 4902 || err?.data?.originalError?.code === 4902;
    if (!unknown) throw wrongChain(current, chainId, refusal(e, `switching to ${name}`).message);
    if (!chain?.rpc_url) throw new Error(`Your wallet does not know ${name} (chain ${chainId}): add it to your wallet, then try again.`);
    try {
      await p.request({
        method: "wallet_addEthereumChain",
        params: [{ chainId: hex, chainName: name, rpcUrls: [chain.rpc_url], nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 } }],
      });
    } catch (e2) {
      throw wrongChain(current, chainId, refusal(e2, `adding ${name}`).message);
    }
  }
  const now = parseInt(await p.request({ method: "eth_chainId" }), 16);
  if (now !== chainId) throw wrongChain(now, chainId, "");
}

function wrongChain(current: number, want: number, why: string): Error {
  return new Error(
    `Your wallet is on chain ${current}, not the pool's ${chainName(want)} (chain ${want}): switch it, then try again.${why ? " " + why : ""}`,
  );
}

function utf8Hex(text: string): string {
  return "0x" + Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, "0")).join("");
}

/// Sign-In with Ethereum: the pool writes the message (its domain is this page's host), the
/// wallet signs it, the pool answers with the session.
export async function signIn(p: Eip1193): Promise<Session> {
  const i = await info();
  const address = await account(p);
  await ensureChain(p, i.chain_id, i.chain);
  const { message } = await api<{ message: string }>("GET", `nonce?address=${address}`);
  let signature: string;
  try {
    signature = await p.request({ method: "personal_sign", params: [utf8Hex(message), address] });
  } catch (e) {
    throw refusal(e, "signing in");
  }
  const s = await api<Session>("POST", "session", { message, signature });
  s.address = s.address.toLowerCase();
  setSession(s);
  return s;
}

function word(hex: string): string {
  return hex.toLowerCase().replace(/^0x/, "").padStart(64, "0");
}

/// The account's AIC balance (ERC-20 `balanceOf`), through the wallet.
export async function balance(p: Eip1193, token: string, owner: string): Promise<bigint> {
  const data = "0x70a08231" + word(owner);
  const r: string = await p.request({ method: "eth_call", params: [{ to: token, data }, "latest"] });
  return BigInt(r && r !== "0x" ? r : "0x0");
}

/// Asks the wallet to show AIC among its tokens (EIP-747).
export async function addToken(p: Eip1193, token: string): Promise<boolean> {
  try {
    return !!(await p.request({ method: "wallet_watchAsset", params: { type: "ERC20", options: { address: token, symbol: "AIC", decimals: 18 } } }));
  } catch (e) {
    throw refusal(e, "adding AIC to the wallet");
  }
}

/// Sends a call from `from`; returns its hash.
export async function send(p: Eip1193, from: string, to: string, data: string, doing: string): Promise<string> {
  try {
    return await p.request({ method: "eth_sendTransaction", params: [{ from, to, data }] });
  } catch (e) {
    throw refusal(e, doing);
  }
}

/// Waits for a transaction's receipt (polling the wallet's node, with a deadline).
export async function mined(p: Eip1193, hash: string, seconds = 180): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  for (let wait = 300; Date.now() < deadline; wait = Math.min(wait * 2, 3000)) {
    const r = await p.request({ method: "eth_getTransactionReceipt", params: [hash] });
    if (r) {
      if (r.status !== "0x1" && r.status !== 1) throw new Error(`Transaction ${hash} was reverted on chain: nothing was paid by it.`);
      return;
    }
    await new Promise((res) => setTimeout(res, wait));
  }
  throw new Error(`Transaction ${hash} is not mined after ${seconds} s: try again once your wallet shows it confirmed; it will not be sent twice.`);
}

export async function signTyped(p: Eip1193, from: string, typed: unknown): Promise<string> {
  try {
    return await p.request({ method: "eth_signTypedData_v4", params: [from, JSON.stringify(typed)] });
  } catch (e) {
    throw refusal(e, "signing the job request");
  }
}
