// DOM helpers: elements built from data, never from HTML strings (what a job prints or a
// user names is text, always).

import type { Announced } from "./wallet";

export type Child = Node | string | number | null | undefined | false;
type Attr = string | number | boolean | undefined | ((e: Event) => void);

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, Attr> = {},
  ...kids: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  append(el, ...kids);
  return el;
}

export function append(el: Element, ...kids: Child[]): void {
  for (const k of kids) {
    if (k === null || k === undefined || k === false) continue;
    el.append(typeof k === "number" ? String(k) : k);
  }
}

export function message(text: string, kind: "error" | "ok" | "" = ""): HTMLElement {
  return h("p", { class: `msg ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/// A live region whose text says what is happening.
export function status(): { el: HTMLElement; say(text: string, kind?: "error" | "ok" | ""): void } {
  const el = h("div", { class: "msg", role: "status", "aria-live": "polite", hidden: true });
  return {
    el,
    say(text, kind = "") {
      el.hidden = text === "";
      el.className = `msg ${kind}`;
      el.setAttribute("role", kind === "error" ? "alert" : "status");
      el.textContent = text;
    },
  };
}

export function table(head: string[], rows: Child[][], caption?: string): HTMLElement {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      caption ? h("caption", { class: "muted" }, caption) : null,
      h("thead", {}, h("tr", {}, ...head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, ...rows.map((r) => h("tr", {}, ...r.map((c, i) => h("td", { "data-label": head[i] }, c))))),
    ),
  );
}

export function stateBadge(state: string): HTMLElement {
  return h("span", { class: `state ${state}`, "data-state": state }, state.replace("_", " "));
}

export function fmtTime(iso?: string | null): string {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export function fmtDuration(seconds: number): string {
  if (!isFinite(seconds) || seconds < 0) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function fmtBytes(n: number): string {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${u[i]}`;
}

/// An amount in AIC's smallest unit (18 decimals) as people read it: at most 6 decimals.
export function fmtAic(units: string | bigint): string {
  const v = typeof units === "bigint" ? units : BigInt(units || "0");
  const whole = v / 10n ** 18n;
  const frac = (v % 10n ** 18n).toString().padStart(18, "0").slice(0, 6).replace(/0+$/, "");
  return `${whole}${frac ? "." + frac : ""} AIC`;
}

export function shortAddress(a: string): string {
  return a.length > 12 ? `${a.slice(0, 6)}…${a.slice(-4)}` : a;
}

export function link(href: string, text: Child, attrs: Record<string, Attr> = {}): HTMLAnchorElement {
  return h("a", { href, "data-link": true, ...attrs }, text);
}

/// Lets the user pick among several wallets.
export function pickWallet(list: Announced[]): Promise<Announced> {
  return new Promise((resolve) => {
    const d = h("dialog", { "aria-labelledby": "pick-title" }, h("h2", { id: "pick-title" }, "Which wallet holds your account?"));
    const row = h("div", { class: "row", id: "wallets" });
    for (const w of list) {
      row.append(
        h(
          "button",
          {
            type: "button",
            "data-wallet": w.info.name,
            onclick: () => {
              d.close();
              d.remove();
              resolve(w);
            },
          },
          w.info.name,
        ),
      );
    }
    d.append(row);
    document.body.append(d);
    d.showModal();
  });
}
