// Moving between the app's pages and asking for the account to be drawn again: pages call
// these, and the frame (main.ts, which imports every page) listens. Pages never import
// main.ts, so the router and its pages do not import each other.

export const NAVIGATED = "aic-navigated";
export const ACCOUNT_CHANGED = "aic-account";

/// Goes to `path` in this tab (a new history entry, or in place of the current one).
export function go(path: string, replace = false): void {
  if (replace) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  window.dispatchEvent(new Event(NAVIGATED));
}

/// The balance or the session changed: the header's account is drawn again.
export function refreshAccount(): void {
  window.dispatchEvent(new Event(ACCOUNT_CHANGED));
}
