import { api, listAll, session, sign, userPrefix } from "../api";
import { uploadAll } from "../upload";
import { fmtBytes, fmtTime, h, message, status, table } from "../ui";

export async function dataPage(root: HTMLElement): Promise<void> {
  document.title = "Datasets · aic";
  const me = session()!.address;
  const base = `${userPrefix(me)}data/`;
  const st = status();
  const list = h("div", { id: "datasets" });
  const nameIn = h("input", { id: "dataset-name", type: "text", required: true, placeholder: "e.g. digits" });
  const filesIn = h("input", { id: "dataset-files", type: "file", multiple: true });
  const folderIn = h("input", { id: "dataset-folder", type: "file", multiple: true, webkitdirectory: true });
  const bar = h("progress", { id: "dataset-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const go = h("button", { type: "submit", id: "dataset-upload" }, "Upload");
  const form = h(
    "form",
    { class: "grid card", id: "upload-dataset", novalidate: true },
    h("label", { for: "dataset-name" }, "Name"),
    nameIn,
    h("label", { for: "dataset-files" }, "Files"),
    filesIn,
    h("label", { for: "dataset-folder" }, "Or a folder"),
    folderIn,
    h("div", { class: "full row" }, go, bar),
    h("div", { class: "full" }, st.el),
  );
  root.append(h("h1", {}, "Datasets"), form, h("h2", {}, "Your datasets"), list);

  const draw = async () => {
    const { prefixes } = await api<{ prefixes: string[] }>("GET", `objects?prefix=${encodeURIComponent(base)}&delimiter=1`);
    if (!prefixes.length) {
      list.replaceChildren(h("p", { class: "muted" }, "None yet."));
      return;
    }
    const rows = await Promise.all(
      prefixes.map(async (p) => {
        const name = p.replace(/\/$/, "").split("/").pop()!;
        const objs = await listAll(p);
        const size = objs.reduce((s, o) => s + o.size, 0);
        const newest = objs.map((o) => o.last_modified).sort().pop();
        const del = h("button", { type: "button", class: "danger", "data-dataset": name, "aria-label": `Delete ${name}` }, "Delete");
        del.addEventListener("click", async () => {
          if (!confirm(`Delete dataset ${name} (${objs.length} files)? Jobs that use it will find nothing.`)) return;
          del.disabled = true;
          try {
            for (let i = 0; i < objs.length; i += 128) {
              const urls = await sign(objs.slice(i, i + 128).map((o) => ({ method: "DELETE", key: o.key })));
              await Promise.all(urls.map((u) => fetch(u.url, { method: "DELETE", headers: u.headers }).then((r) => {
                if (!r.ok && r.status !== 404) throw new Error(`storage answered ${r.status}`);
              })));
            }
            st.say(`Deleted ${name}.`, "ok");
          } catch (e) {
            st.say(`Deleting ${name}: ${(e as Error).message}`, "error");
          }
          await draw();
        });
        return [name, objs.length, fmtBytes(size), fmtTime(newest), del];
      }),
    );
    list.replaceChildren(table(["Dataset", "Files", "Size", "Updated", "Actions"], rows));
  };

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = nameIn.value.trim();
    const picked = [...Array.from(filesIn.files || []).map((f) => ({ rel: f.name, f })),
      ...Array.from(folderIn.files || []).map((f) => ({ rel: (f.webkitRelativePath || f.name).split("/").slice(1).join("/") || f.name, f }))];
    if (!/^[A-Za-z0-9._-][A-Za-z0-9._ -]{0,127}$/.test(name)) return st.say("Name the dataset: letters, digits, '.', '_', '-'.", "error");
    if (!picked.length) return st.say("Pick files or a folder to upload.", "error");
    go.disabled = true;
    bar.hidden = false;
    try {
      await uploadAll(picked.map((p) => ({ key: `${base}${name}/${p.rel}`, file: p.f })), (sent, total) => {
        bar.max = total || 1;
        bar.value = sent;
        st.say(`Uploading ${name}: ${fmtBytes(sent)} of ${fmtBytes(total)}…`);
      });
      st.say(`Uploaded ${name}: ${picked.length} file(s).`, "ok");
      form.reset();
      await draw();
    } catch (err) {
      st.say(`Uploading ${name}: ${(err as Error).message}. What was uploaded stays; upload again to finish.`, "error");
    } finally {
      go.disabled = false;
    }
  });
  try {
    await draw();
  } catch (e) {
    list.replaceChildren(message((e as Error).message, "error"));
  }
}
