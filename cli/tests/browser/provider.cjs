// An injected wallet (EIP-1193 provider backed by anvil's unlocked accounts) that behaves as
// MetaMask does on the points aic's pages must respect (MetaMask cannot be installed here):
//
// - chains: the wallet starts where the scenario says (mainnet by default) and knows only the
//   chains it was given; `wallet_switchEthereumChain` to an unknown chain fails with 4902
//   ("Unrecognized chain ID … Try adding the chain using wallet_addEthereumChain first"),
//   `wallet_addEthereumChain` checks that the RPC URL answers the chain id it claims, then
//   switches (the user accepts); `chainChanged` fires on every switch (MetaMask docs,
//   "Detect the user's network"; EIP-1193 events);
// - `eth_signTypedData_v4`: refused unless `domain.chainId` is the active chain, with
//   MetaMask's own message (MetaMask/core signature-controller `utils/validation.ts`,
//   `validateTypedSignatureRequestV3V4`: `Provided chainId "…" must match the active chainId "…"`);
// - `personal_sign` of a Sign-In with Ethereum message: the message's domain must match the
//   page's origin (MetaMask/core controller-utils `siwe.ts`, `isValidSIWEOrigin`: hostname
//   must match, port and user when given); otherwise MetaMask shows its danger alert, and the
//   user here declines (4001);
// - `eth_sendTransaction` goes out on the *active* chain: sent while the wallet is on another
//   chain it would cost real gas there and never reach the pool's chain (counted, never
//   forwarded); only from the selected account (else 4100);
// - accounts: the selected account can change (`accountsChanged`), and a refusal is 4001;
// - EIP-6963: the wallet announces itself (rdns `io.metamask`) on `eip6963:requestProvider`;
//   other wallets may be announced too, one of them having taken `window.ethereum`;
// - a payment can be *sped up* in the wallet after its hash was handed back: the same call,
//   same nonce, a higher fee, mined in its place (the first hash never mines); or *cancelled*:
//   MetaMask's cancel is a 0-value transfer to oneself with the same nonce and a higher fee,
//   mined in its place (nothing paid).
//
// - `wallet_watchAsset` (EIP-747): the user accepts; logged.
//
// SCENARIO: {account, startChain?, knownChains?, rejectSignOnce?, rejectChain?, speedUp?, holdPayment?, cancelPaymentOnce?, wallets?}
// (`rejectChain`: the user declines switching to and adding the pool's chain, 4001.)
// Used by wallet.cjs (the CLI's wallet page) and webapp.cjs (the web app).
function installWallet({ rpc, scenario }) {
  const err = (code, message) => Object.assign(new Error(message), { code });
  const ANVIL = "0x7a69";
  const state = {
    chainId: scenario.startChain || "0x1",
    known: new Set(["0x1", ...(scenario.knownChains || [])]),
    account: scenario.account,
    listeners: {},
    rejectSignOnce: !!scenario.rejectSignOnce,
    speedUp: !!scenario.speedUp,
    holdPayment: !!scenario.holdPayment,
    cancelPaymentOnce: !!scenario.cancelPaymentOnce,
    rejectChain: !!scenario.rejectChain,
    log: { sends: [], approvals: [], wrongChainSends: 0, switched: [], added: [], spedUp: null, cancelledBy: null, watched: [], signedTyped: 0 },
  };
  // The wallet's state (its chain, the chains it knows, the account, what it did) lives in the
  // extension, so it outlives a reload of the page: kept in the tab's sessionStorage.
  const store = (() => {
    try {
      return window.sessionStorage;
    } catch {
      return null; // about:blank and the like
    }
  })();
  const saved = store && JSON.parse(store.getItem("wallet.state") || "null");
  if (saved) {
    state.chainId = saved.chainId;
    state.known = new Set(saved.known);
    state.account = saved.account;
    state.log = saved.log;
  }
  const save = () => {
    if (store) store.setItem("wallet.state", JSON.stringify({ chainId: state.chainId, known: [...state.known], account: state.account, log: state.log }));
  };
  let id = 0;
  async function call(url, method, params) {
    const body = JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params: params || [] });
    // A wallet extension reaches its node from its own process, not from the page (whose
    // Content-Security-Policy does not apply to it): `__walletRpc` is that, when the driver
    // exposes it.
    const j = window.__walletRpc
      ? JSON.parse(await window.__walletRpc(url, body))
      : await (await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body })).json();
    if (j.error) throw err(j.error.code, j.error.message);
    return j.result;
  }
  const anvil = (method, params) => call(rpc, method, params);
  function emit(event, arg) {
    for (const cb of state.listeners[event] || []) setTimeout(() => cb(arg), 0);
  }
  function siweDomain(hex) {
    const bytes = (hex.startsWith("0x") ? hex.slice(2) : hex).match(/../g) || [];
    const text = new TextDecoder().decode(new Uint8Array(bytes.map((b) => parseInt(b, 16))));
    const m = text.match(/^(\S+) wants you to sign in with your Ethereum account:\n/);
    return m ? m[1] : null;
  }
  function validSiweOrigin(domain, origin) {
    const o = new URL(origin);
    const d = /^[^/:]*:\/\//.test(domain) ? new URL(domain) : new URL(o.protocol + "//" + domain);
    if (d.hostname.localeCompare(o.hostname, undefined, { sensitivity: "accent" }) !== 0) return false;
    if (d.port !== "" && d.port !== o.port) return o.port === "" && d.port === ({ "http:": "80", "https:": "443" })[o.protocol];
    return true;
  }
  async function speedUp(tx) {
    await anvil("evm_setAutomine", [false]);
    const nonce = await anvil("eth_getTransactionCount", [tx.from, "pending"]);
    const slow = { ...tx, nonce, gas: "0x1d4c0", maxFeePerGas: "0x77359400", maxPriorityFeePerGas: "0x77359400" };
    const first = await anvil("eth_sendTransaction", [slow]);
    const fast = await anvil("eth_sendTransaction", [{ ...slow, maxFeePerGas: "0xee6b2800", maxPriorityFeePerGas: "0xee6b2800" }]);
    await anvil("evm_mine", []);
    await anvil("evm_setAutomine", [true]);
    state.log.sends.push(first);
    state.log.spedUp = fast;
    return first;
  }
  async function cancelPayment(tx) {
    await anvil("evm_setAutomine", [false]);
    const nonce = await anvil("eth_getTransactionCount", [tx.from, "pending"]);
    const fee = { maxFeePerGas: "0x77359400", maxPriorityFeePerGas: "0x77359400" };
    const first = await anvil("eth_sendTransaction", [{ ...tx, nonce, gas: "0x1d4c0", ...fee }]);
    const cancel = await anvil("eth_sendTransaction", [
      { from: tx.from, to: tx.from, value: "0x0", data: "0x", nonce, gas: "0x5208", maxFeePerGas: "0xee6b2800", maxPriorityFeePerGas: "0xee6b2800" },
    ]);
    await anvil("evm_mine", []);
    await anvil("evm_setAutomine", [true]);
    state.log.sends.push(first);
    state.log.cancelledBy = cancel;
    return first;
  }
  const provider = {
    isMetaMask: true,
    on(event, cb) { (state.listeners[event] = state.listeners[event] || []).push(cb); },
    removeListener(event, cb) { state.listeners[event] = (state.listeners[event] || []).filter((f) => f !== cb); },
    request(args) {
      return this.handle(args).finally(save);
    },
    async handle({ method, params = [] }) {
      switch (method) {
        case "eth_requestAccounts":
        case "eth_accounts":
          return [state.account];
        case "eth_chainId":
          return state.chainId;
        case "wallet_switchEthereumChain": {
          const c = String(params[0] && params[0].chainId).toLowerCase();
          if (state.rejectChain) throw err(4001, "User rejected the request.");
          if (!state.known.has(c)) {
            throw err(4902, `Unrecognized chain ID "${c}". Try adding the chain using wallet_addEthereumChain first.`);
          }
          state.chainId = c;
          state.log.switched.push(c);
          emit("chainChanged", c);
          return null;
        }
        case "wallet_addEthereumChain": {
          const p = params[0] || {};
          if (state.rejectChain) throw err(4001, "User rejected the request.");
          const c = String(p.chainId).toLowerCase();
          if (!Array.isArray(p.rpcUrls) || p.rpcUrls.length === 0) {
            throw err(-32602, "Expected an array with at least one valid string HTTPS url 'rpcUrls'");
          }
          const answered = await call(p.rpcUrls[0], "eth_chainId", []);
          if (String(answered).toLowerCase() !== c) {
            throw err(-32602, `Chain ID returned by RPC URL ${p.rpcUrls[0]} does not match ${c}`);
          }
          state.known.add(c);
          state.log.added.push(c);
          state.chainId = c;
          emit("chainChanged", c);
          return null;
        }
        case "personal_sign": {
          const domain = siweDomain(params[0]);
          if (domain !== null && !validSiweOrigin(domain, location.origin)) {
            throw err(4001, `User rejected the request (the site making the request, ${location.origin}, is not the site you're signing into, ${domain})`);
          }
          return anvil(method, params);
        }
        case "eth_signTypedData_v4": {
          // Once per tab: the wallet's state outlives a reload of the page (it lives in the
          // extension), so the consumed refusal is remembered in the tab's sessionStorage.
          if (state.rejectSignOnce && !(store && store.getItem("wallet.rejectedOnce"))) {
            state.rejectSignOnce = false;
            if (store) store.setItem("wallet.rejectedOnce", "1");
            throw err(4001, "MetaMask Typed Message Signature: User denied message signature.");
          }
          let chainId = JSON.parse(params[1]).domain.chainId;
          if (chainId) {
            if (typeof chainId === "string") chainId = parseInt(chainId, chainId.startsWith("0x") ? 16 : 10);
            const active = parseInt(state.chainId, 16);
            if (chainId !== active) throw new Error(`Provided chainId "${chainId}" must match the active chainId "${active}"`);
          }
          state.log.signedTyped += 1;
          return anvil(method, params);
        }
        case "wallet_watchAsset": {
          // EIP-747: params is an object {type, options}; MetaMask asks the user, who accepts.
          const o = (params && params.options) || {};
          if (params.type !== "ERC20" || !o.address) throw err(-32602, "Invalid asset");
          state.log.watched.push(String(o.address).toLowerCase());
          return true;
        }
        case "eth_sendTransaction": {
          const tx = params[0];
          if (String(tx.from).toLowerCase() !== state.account.toLowerCase()) {
            throw err(4100, "The requested account and/or method has not been authorized by the user.");
          }
          if (state.chainId !== ANVIL) {
            // Out on another chain (real gas there); the pool's chain never sees it.
            state.log.wrongChainSends += 1;
            return "0x" + Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) => b.toString(16).padStart(2, "0")).join("");
          }
          if (String(tx.data || "").startsWith("0x095ea7b3")) {
            // An allowance (ERC-20 `approve`): sent as it is; the payment follows.
            const hash = await anvil(method, params);
            state.log.approvals.push(hash);
            return hash;
          }
          if (state.speedUp) return speedUp(tx);
          if (state.cancelPaymentOnce) {
            state.cancelPaymentOnce = false;
            return cancelPayment(tx);
          }
          if (state.holdPayment) {
            // Sent, but the chain does not include it until the test mines (a slow network).
            state.holdPayment = false;
            await anvil("evm_setAutomine", [false]);
            const hash = await anvil(method, params);
            state.log.sends.push(hash);
            return hash;
          }
          const hash = await anvil(method, params);
          state.log.sends.push(hash);
          return hash;
        }
        default:
          if (state.chainId !== ANVIL) throw err(-32603, "this wallet reaches only the pool's chain");
          return anvil(method, params);
      }
    },
  };
  const icon = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 1 1'/%3E";
  const wallets = [{ info: { uuid: "3f1e2d6c-0000-4000-8000-000000000001", name: "MetaMask", icon, rdns: "io.metamask" }, provider }];
  for (const [i, name] of (scenario.wallets || []).entries()) {
    const other = {
      async request() { throw err(4001, name + ": the user rejected the request"); },
      on() {},
      removeListener() {},
    };
    wallets.push({ info: { uuid: `3f1e2d6c-0000-4000-8000-00000000010${i}`, name, icon, rdns: "com.example.wallet" + i }, provider: other });
  }
  const announce = () => {
    for (const w of wallets) window.dispatchEvent(new CustomEvent("eip6963:announceProvider", { detail: Object.freeze(w) }));
  };
  window.addEventListener("eip6963:requestProvider", announce);
  // The extension that loaded last holds window.ethereum.
  window.ethereum = wallets[wallets.length - 1].provider;
  window.__wallet = {
    log: state.log,
    switchAccount(a) { state.account = a; save(); emit("accountsChanged", [a]); },
    async mine() { await anvil("evm_setAutomine", [true]); await anvil("evm_mine", []); },
  };
}

module.exports = { installWallet };

/// Lets the wallet reach its node from Node.js, as an extension does from its own process.
async function exposeRpc(context) {
  await context.exposeFunction("__walletRpc", async (url, body) => {
    const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body });
    return await r.text();
  });
}

module.exports.exposeRpc = exposeRpc;
