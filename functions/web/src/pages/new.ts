// A new job: code from disk, a dataset, the size, the quote; then paid and signed in the
// wallet and uploaded — the same signed EIP-712 request `aic run` makes (the pool builds the
// typed data from the request, `POST /v1/draft`, and validate checks it all again).

import { go } from "../nav";
import { api, session, userPrefix } from "../api";
import { sha256Hex } from "../upload";
import { ulid } from "../ulid";
import { fmtBytes, h, status } from "../ui";
import { forgetPaid, isPaid, paidRequest, submit as pay, type CodeFile, type Draft } from "./submit";

/// Byte order of UTF-8, as the pool sorts the digest's lines.
function utf8Compare(a: string, b: string): number {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/// The code digest a request signs: SHA-256 over "<sha256>  <path>\n" per file, by path.
/// A name from a folder's, as `aic deploy` makes it: lower case, runs of other characters
/// as one `-`, at most 63.
function defaultName(folder: string): string {
  return folder.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+/, "").slice(0, 63).replace(/-+$/, "");
}

export async function codeDigest(files: CodeFile[]): Promise<string> {
  const lines = await Promise.all(files.map(async (f) => [f.rel, await sha256Hex(f.file)] as const));
  lines.sort((a, b) => utf8Compare(a[0], b[0]));
  const text = lines.map(([rel, sum]) => `${sum}  ${rel}\n`).join("");
  return sha256Hex(new TextEncoder().encode(text).buffer as ArrayBuffer);
}

export async function newPage(root: HTMLElement): Promise<void> {
  document.title = "New job · aic";
  const me = session()!.address;
  const datasets = await api<{ prefixes: string[] }>("GET", `objects?prefix=${encodeURIComponent(userPrefix(me) + "data/")}&delimiter=1`);
  const names = datasets.prefixes.map((p) => p.replace(/\/$/, "").split("/").pop()!);

  const field = (label: string, id: string, input: HTMLElement, hint?: string) => [
    h("label", { for: id }, label),
    h("div", {}, input, hint ? h("div", { class: "muted", id: `${id}-hint` }, hint) : null),
  ];
  const kind = h("select", { id: "kind" }, h("option", { value: "train" }, "Train (run a script to the end)"), h("option", { value: "serve" }, "Deploy (serve app.py as an HTTP API)"));
  const script = h("input", { id: "script", type: "file", accept: ".py,.sh" });
  const folder = h("input", { id: "folder", type: "file", multiple: true, webkitdirectory: true });
  const entry = h("select", { id: "entrypoint" });
  const data = h("select", { id: "dataset" }, h("option", { value: "" }, "none"), ...names.map((n) => h("option", { value: n }, n)));
  const miners = h("input", { id: "miners", type: "number", min: 1, max: 64, value: 1 });
  const gpus = h("input", { id: "gpus", type: "number", min: 1, max: 16, value: 1 });
  const hours = h("input", { id: "hours", type: "number", min: 0.001, step: 0.001, value: 0.1 });
  const launcher = h(
    "select",
    { id: "launcher" },
    ...["command", "mpi", "horovod", "torchrun"].map((l) => h("option", { value: l }, l)),
  );
  const name = h("input", { id: "name", type: "text", pattern: "[a-z0-9-]{1,63}", placeholder: "optional: a-z, 0-9, -" });
  const args = h("input", { id: "args", type: "text", placeholder: "optional: arguments for the program" });
  const quote = h("p", { id: "quote", "aria-live": "polite" }, "Pick your code to see the quote.");
  const submit = h("button", { type: "submit", id: "submit" }, "Pay and submit");
  const st = status();
  const bar = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const form = h(
    "form",
    { class: "grid card", id: "new-job", novalidate: true },
    ...field("What", "kind", kind),
    ...field("Script", "script", script, "one file, or a folder below"),
    ...field("Or a folder", "folder", folder),
    ...field("Program", "entrypoint", entry),
    ...field("Dataset", "dataset", data, names.length ? "" : "no datasets yet: upload one on the Datasets page"),
    ...field("Miners (replicas)", "miners", miners),
    ...field("GPUs per miner", "gpus", gpus),
    ...field("Hours", "hours", hours, "the most it may run; unused time is refunded where the pool has an escrow"),
    ...field("Launcher", "launcher", launcher, "mpi, horovod and torchrun start one process per GPU on every miner"),
    ...field("Name", "name", name),
    ...field("Arguments", "args", args),
    h("div", { class: "full" }, quote),
    h("div", { class: "full row" }, submit, bar),
    h("div", { class: "full" }, st.el),
  );
  root.append(h("h1", {}, "New job"));
  const kept = paidRequest("new");
  if (kept) {
    const payment = kept.payment as { tx?: string } | undefined;
    const discard = h("button", { type: "button", class: "secondary", id: "discard-paid" }, "Discard it");
    const notice = h(
      "div",
      { class: "msg", role: "status", id: "paid-notice" },
      payment
        ? `You paid for job ${kept.job_id} (${kept.entrypoint}) in ${payment.tx || "a transaction"} and it was not submitted: pick the same code and press “Sign and submit”. `
        : `Your wallet was asked to pay for job ${kept.job_id} (${kept.entrypoint}) and it was not submitted: pick the same code and press “Pay and submit”; it follows that payment and does not pay twice. `,
      discard,
    );
    discard.addEventListener("click", () => {
      if (!confirm("Discard it? Its deposit stays in the escrow until you reclaim it.")) return;
      forgetPaid("new");
      notice.remove();
      submit.textContent = "Pay and submit";
    });
    root.append(notice);
    if (payment) submit.textContent = "Sign and submit (paid)";
  }
  root.append(form);

  if (new URLSearchParams(location.search).get("kind") === "serve") {
    kind.value = "serve";
    miners.value = "2";
  }
  let files: CodeFile[] = [];
  let folderName = "";
  const setEntries = (rels: string[], prefer: string[]) => {
    entry.replaceChildren(...rels.filter((r) => /\.(py|sh)$/.test(r) || rels.length === 1).map((r) => h("option", { value: r }, r)));
    const best = prefer.find((p) => rels.includes(p));
    if (best) entry.value = best;
  };
  script.addEventListener("change", () => {
    const f = script.files?.[0];
    if (!f) return;
    folder.value = "";
    files = [{ rel: f.name, file: f }];
    setEntries([f.name], [f.name]);
    void requote();
  });
  folder.addEventListener("change", () => {
    const list = Array.from(folder.files || []);
    if (!list.length) return;
    script.value = "";
    files = list.map((f) => ({ rel: (f.webkitRelativePath || f.name).split("/").slice(1).join("/") || f.name, file: f }));
    folderName = defaultName((list[0].webkitRelativePath || "").split("/")[0] || "");
    setEntries(files.map((f) => f.rel).sort(), kind.value === "serve" ? ["app.py"] : ["train.py", "main.py"]);
    void requote();
  });

  const build = (): Record<string, unknown> => {
    const now = new Date();
    const req: Record<string, unknown> = {
      version: 1,
      kind: kind.value,
      owner: me,
      job_id: ulid(),
      entrypoint: entry.value,
      code_digest: "",
      miners: Number(miners.value),
      gpus_per_miner: Number(gpus.value),
      max_hours: Number(hours.value),
      launcher: kind.value === "serve" ? "command" : launcher.value,
      args: args.value.trim() ? args.value.trim().split(/\s+/) : [],
      env: {},
      created_at: now.toISOString(),
      expires_at: new Date(now.getTime() + 3600_000).toISOString(),
    };
    if (name.value.trim()) req.name = name.value.trim();
    // A deployment is named after its folder unless named (as `aic deploy` does), so that
    // it has the name's stable address.
    else if (kind.value === "serve" && folderName) req.name = folderName;
    if (data.value) req.data = data.value;
    return req;
  };

  let seq = 0;
  const requote = async () => {
    const mine = ++seq;
    if (!files.length || !entry.value) return;
    try {
      const d = await api<Draft>("POST", "draft", build());
      if (mine !== seq) return;
      const size = files.reduce((s, f) => s + f.file.size, 0);
      quote.textContent =
        d.quote.display === "free"
          ? `Free on this pool · ${files.length} file(s), ${fmtBytes(size)}`
          : `Quote: ${d.quote.gpu_hours} GPU-hours × ${d.quote.price} = ${d.quote.display} · ${files.length} file(s), ${fmtBytes(size)}`;
      quote.className = "";
    } catch (e) {
      if (mine !== seq) return;
      quote.textContent = (e as Error).message;
      quote.className = "msg error";
    }
  };
  for (const el of [kind, entry, data, miners, gpus, hours, launcher, name, args]) el.addEventListener("change", () => void requote());

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!files.length) return st.say("Pick a script or a folder first.", "error");
    submit.disabled = true;
    try {
      const id = await pay(
        "new",
        async () => {
          const req = build();
          st.say("Hashing your code…");
          req.code_digest = await codeDigest(files);
          return { req, files };
        },
        (t) => st.say(t),
        (sent, total) => {
          bar.hidden = false;
          bar.max = total || 1;
          bar.value = sent;
        },
      );
      go(`/jobs/${id}`);
    } catch (e) {
      const again = isPaid("new");
      st.say((e as Error).message + (again ? " Press “Sign and submit” again: it will not pay twice." : ""), "error");
      if (again) submit.textContent = "Sign and submit (paid)";
    } finally {
      submit.disabled = false;
    }
  });
}
