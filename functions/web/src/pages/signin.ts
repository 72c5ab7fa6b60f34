import { go } from "../nav";
import { session } from "../api";
import { h, pickWallet, status } from "../ui";
import { signIn, wallet } from "../wallet";

export function signinPage(root: HTMLElement): void {
  document.title = "Sign in · aic";
  const next = new URLSearchParams(location.search).get("next") || "/jobs";
  const safeNext = next.startsWith("/") && !next.startsWith("//") ? next : "/jobs";
  const st = status();
  const button = h("button", { type: "button", id: "signin" }, "Sign in with your wallet");
  button.addEventListener("click", async () => {
    button.disabled = true;
    st.say("Asking your wallet to sign in…");
    try {
      const w = await wallet(pickWallet);
      const s = await signIn(w.provider);
      st.say(`Signed in as ${s.address}.`, "ok");
      go(safeNext, true);
    } catch (e) {
      st.say((e as Error).message, "error");
    } finally {
      button.disabled = false;
    }
  });
  root.append(
    h("h1", {}, "Sign in"),
    h(
      "div",
      { class: "card" },
      h("p", {}, "Sign in with the wallet that pays for your jobs (MetaMask). Your wallet signs a message; no transaction is sent and nothing is paid."),
      session() ? h("p", { class: "muted" }, `You are signed in as ${session()!.address}.`) : null,
      button,
      st.el,
    ),
  );
}
