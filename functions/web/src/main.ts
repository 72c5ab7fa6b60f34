// aic's web app: the user's side of the pool. Each page has a URL of its own; links move
// between them without reloading (history API), and the host answers every one of these
// URLs with this same app.

import { api, info, session, setSession, type Info } from "./api";
import { addToken, balance, wallet } from "./wallet";
import { fmtAic, h, message, pickWallet, shortAddress } from "./ui";
import { ACCOUNT_CHANGED, NAVIGATED, go } from "./nav";
import { jobsPage } from "./pages/jobs";
import { jobPage } from "./pages/job";
import { newPage } from "./pages/new";
import { dataPage } from "./pages/data";
import { deploymentsPage } from "./pages/deployments";
import { poolPage } from "./pages/pool";
import { signinPage } from "./pages/signin";

/// What a page leaves running (timers), stopped when the user moves on.
export type Cleanup = () => void;
export type Page = (root: HTMLElement, params: string[]) => Cleanup | void | Promise<Cleanup | void>;

const routes: [RegExp, Page, boolean][] = [
  [/^\/(?:jobs)?$/, jobsPage, true],
  [/^\/jobs\/([0-9a-z]{26})$/, jobPage, true],
  [/^\/new$/, newPage, true],
  [/^\/data$/, dataPage, true],
  [/^\/deployments$/, deploymentsPage, true],
  [/^\/pool$/, poolPage, true],
  [/^\/signin$/, signinPage, false],
];

let cleanup: Cleanup | null = null;
let generation = 0;

async function render(): Promise<void> {
  const gen = ++generation;
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  const main = document.getElementById("main")!;
  const path = location.pathname.replace(/\/+$/, "") || "/";
  for (const a of document.querySelectorAll<HTMLAnchorElement>("header nav a")) {
    const here = path === a.pathname || (a.pathname !== "/" && path.startsWith(a.pathname + "/"));
    if (here) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const found = routes.map(([re, page, auth]) => [re.exec(path), page, auth] as const).find(([m]) => m);
  main.replaceChildren();
  if (!found) {
    document.title = "Not found · aic";
    main.append(h("h1", {}, "Not found"), message(`There is no page ${path} here.`, "error"));
    return;
  }
  const [m, page, auth] = found;
  if (auth && !session()) {
    go(`/signin?next=${encodeURIComponent(location.pathname)}`, true);
    return;
  }
  try {
    const c = await page(main, m!.slice(1));
    if (gen !== generation) {
      if (c) c();
      return;
    }
    cleanup = c || null;
  } catch (e) {
    if (gen === generation) main.append(message((e as Error).message, "error"));
  }
  main.focus({ preventScroll: true });
}

async function drawAccount(): Promise<void> {
  const el = document.getElementById("account")!;
  const s = session();
  if (!s) {
    el.replaceChildren(h("a", { href: "/signin", "data-link": true, class: "button secondary" }, "Sign in"));
    return;
  }
  const bal = h("span", { id: "balance", class: "balance" });
  const addr = h("span", { id: "address", title: s.address }, shortAddress(s.address));
  // Signing out ends the session on the pool too (every session of this wallet issued until
  // now), not only in this tab: a token copied elsewhere stops working.
  const signOut = async () => {
    try {
      await api("POST", "logout");
    } catch {
      /* an expired or already signed-out session: nothing left to end */
    }
    setSession(null);
    go("/signin");
  };
  const out = h("button", { type: "button", id: "signout", onclick: () => void signOut() }, "Sign out");
  el.replaceChildren(addr, bal, out);
  let i: Info;
  try {
    i = await info();
  } catch {
    return;
  }
  if (!i.chain || i.free) {
    bal.textContent = "free pool";
    return;
  }
  const token = i.chain.token;
  const add = h("button", { type: "button", id: "add-token", onclick: async () => {
    try {
      const w = await wallet(pickWallet);
      await addToken(w.provider, token);
    } catch (e) {
      alertMessage((e as Error).message);
    }
  } }, "Add AIC to wallet");
  el.insertBefore(add, out);
  try {
    const w = await wallet(pickWallet);
    bal.textContent = fmtAic(await balance(w.provider, token, s.address));
  } catch {
    bal.textContent = "";
  }
}

/// A one-line notice at the top of the page.
function alertMessage(text: string): void {
  const main = document.getElementById("main")!;
  main.prepend(message(text, "error"));
}

document.addEventListener("click", (e) => {
  const a = (e.target as Element | null)?.closest?.("a[data-link]") as HTMLAnchorElement | null;
  if (!a || a.origin !== location.origin || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  go(a.pathname + a.search);
});
window.addEventListener("popstate", () => void render());
window.addEventListener(NAVIGATED, () => void render());
window.addEventListener(ACCOUNT_CHANGED, () => void drawAccount());
window.addEventListener("aic-session", () => void drawAccount());
void drawAccount();
void render();
// Session checked against the pool once: a token from another pool or an expired key is dropped.
if (session()) api("GET", "jobs?limit=1").catch(() => undefined);
