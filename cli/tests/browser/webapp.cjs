// The web app end to end in headless Chromium (Debian's, through playwright-core), with the
// injected wallet of provider.cjs backed by anvil: the tutorial (sign in, the digits
// dataset, train_mpi.py on two miners paid and signed in the wallet, the log to success,
// the checkpoint downloaded, deployed, the address answering, removed), the refusals (a
// declined signature, the wrong chain, another wallet's job URL), an accessibility scan of
// every page (axe-core), screenshots of every page at desktop and phone widths, and the time
// to first render of the jobs page of a wallet with 200 jobs.
//
// usage: NODE_PATH=contracts/node_modules:functions/web/node_modules node webapp.cjs CONFIG_JSON
// CONFIG: {base, rpc, out, owner, other, many, dataset: [files], project, serve, pixels, token, script? (a job
//          `other`, who holds no AIC, tries),
//          prefix? (of the screenshots), tutorialOnly? (the tutorial alone: pool mode),
//          live? {argv, env, start, end} (`aic run -d` of a job of `many` that prints a line once
//          `start` exists and ends once `end` does)}
// Prints one JSON line with what happened (see `result` below); the Rust test judges it.
const fs = require("fs");
const path = require("path");
const os = require("os");
const { chromium } = require("playwright-core");
const { installWallet, exposeRpc } = require("./provider.cjs");

const cfg = JSON.parse(process.argv[2]);
const result = { steps: [], job: null, deployment: null, prediction: null, downloaded: null, wallet: null, refusals: {}, axe: [], firstRenderMs: null, rows: 0, shots: [], console: [], error: null };
const step = (s) => { result.steps.push(s); };
const desktop = { width: 1280, height: 860 };
const phone = { width: 390, height: 844 };

async function newContext(browser, scenario, extra = {}) {
  const context = await browser.newContext({ viewport: desktop, acceptDownloads: true, ...extra });
  await exposeRpc(context);
  await context.addInitScript(installWallet, { rpc: cfg.rpc, scenario });
  return context;
}

function watchConsole(page, who) {
  page.on("console", (m) => { if (m.type() === "error") result.console.push(`${who}: ${m.text()}`); });
  page.on("pageerror", (e) => result.console.push(`${who}: ${e.message}`));
}

async function shoot(page, name) {
  for (const [w, size] of [["desktop", desktop], ["phone", phone]]) {
    await page.setViewportSize(size);
    const file = path.join(cfg.out, `${cfg.prefix || "webapp"}-${name}-${w}.png`);
    await page.screenshot({ path: file, fullPage: true });
    result.shots.push(file);
  }
  await page.setViewportSize(desktop);
}

async function signIn(page, base) {
  await page.goto(base + "/jobs");
  await page.waitForURL(/\/signin\?next=/);
  await page.click("#signin");
}

// A prediction from a page of the deployment's own origin (`link`, as the app shows it): the
// deployment answers there, never at the app's origin.
async function predictAt(context, link, pixels) {
  const p = await context.newPage();
  try {
    await p.goto(link);
    return await p.evaluate(async (pixels) => {
      const r = await fetch("predict", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ pixels }) });
      return { status: r.status, body: await r.json() };
    }, pixels);
  } finally {
    await p.close();
  }
}

async function text(page, sel) {
  return (await page.textContent(sel)) || "";
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.AIC_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  try {
    // The owner: a wallet on mainnet that does not know the pool's chain; the user declines
    // the first typed-data signature.
    const owner = await newContext(browser, { account: cfg.owner, startChain: "0x1", rejectSignOnce: true });
    const page = await owner.newPage();
    watchConsole(page, "owner");
    await signIn(page, cfg.base);
    await page.waitForURL(/\/jobs$/, { timeout: 30000 });
    step("signed in");
    await page.waitForSelector("#balance:has-text('AIC')", { timeout: 15000 });
    result.balanceShown = await text(page, "#balance");
    await page.click("#add-token");

    // The dataset.
    await page.click("a[href='/data']");
    await page.fill("#dataset-name", "digits");
    await page.setInputFiles("#dataset-files", cfg.dataset);
    await page.click("#dataset-upload");
    await page.waitForSelector("#datasets td:has-text('digits')", { timeout: 30000 });
    step("dataset uploaded");
    await shoot(page, "data");

    // The training job: the digits folder, train_mpi.py on two miners.
    await page.click("a[href='/new']");
    await page.setInputFiles("#folder", cfg.project);
    await page.selectOption("#entrypoint", "train_mpi.py");
    await page.selectOption("#dataset", "digits");
    await page.fill("#miners", "2");
    await page.selectOption("#launcher", "mpi");
    await page.fill("#hours", "0.05");
    await page.fill("#args", "--epochs 12");
    await page.dispatchEvent("#args", "change");
    await page.waitForSelector("#quote:has-text('Quote:')", { timeout: 15000 });
    result.quote = await text(page, "#quote");
    await shoot(page, "new");
    await page.click("#submit");
    await page.waitForSelector("[role=alert]:has-text('declined signing')", { timeout: 60000 });
    result.refusals.declined = (await page.textContent("[role=alert]:has-text('declined signing')")).trim();
    // The tab is reloaded (the page's memory gone): the paid job is still known, and the
    // same code picked again is signed and submitted without paying again.
    await page.reload();
    await page.waitForSelector("#paid-notice", { timeout: 15000 });
    result.paidNotice = (await text(page, "#paid-notice")).trim();
    await page.setInputFiles("#folder", cfg.project);
    await page.selectOption("#entrypoint", "train_mpi.py");
    await page.click("#submit");
    await page.waitForURL(/\/jobs\/[0-9a-z]{26}$/, { timeout: 60000 });
    result.job = page.url().split("/").pop();
    step("job submitted");
    await page.waitForSelector("#state [data-state=running], #state [data-state=succeeded]", { timeout: 120000 });
    await page.waitForSelector("#state [data-state=succeeded], #state [data-state=failed]", { timeout: 300000 });
    result.jobState = await page.getAttribute("#state [data-state]", "data-state");
    await page.waitForSelector("#log:has-text('[rank 1]')", { timeout: 15000 });
    result.log = await text(page, "#log");
    result.progress = await page.getAttribute("#progress", "value");
    await page.waitForSelector("#outputs button[data-key='model.npz']", { timeout: 30000 });
    await page.waitForSelector("#money table", { timeout: 30000 });
    result.money = await text(page, "#money");
    // Its GPU use: a line per allocation's GPU in each chart, and the table.
    const lines = "#gpu-use figure:first-child polyline";
    await page.waitForFunction((sel) => document.querySelectorAll(sel).length >= 2, lines, { timeout: 30000 }).catch(() => undefined);
    result.gpuLines = await page.$$eval(lines, (ls) => ls.map((l) => l.getAttribute("data-gpu")));
    result.gpuUse = await text(page, "#gpu-use");
    await shoot(page, "job");
    const [dl] = await Promise.all([page.waitForEvent("download"), page.click("#outputs button[data-key='model.npz']")]);
    const model = path.join(cfg.out, `${cfg.prefix || "webapp"}-model.npz`);
    await dl.saveAs(model);
    result.downloaded = model;
    step("checkpoint downloaded");

    // The deployment: the serve project with that checkpoint.
    const serve = fs.mkdtempSync(path.join(os.tmpdir(), "aic-web-serve-"));
    const project = path.join(serve, "serve");
    fs.cpSync(cfg.serve, project, { recursive: true });
    fs.copyFileSync(model, path.join(project, "model.npz"));
    await page.click("a[href='/new']");
    await page.selectOption("#kind", "serve");
    await page.setInputFiles("#folder", project);
    await page.selectOption("#entrypoint", "app.py");
    await page.fill("#miners", "2");
    await page.fill("#hours", "0.05");
    await page.fill("#name", "digits-web");
    await page.dispatchEvent("#name", "change");
    await page.waitForSelector("#quote:has-text('Quote:')", { timeout: 15000 });
    await page.click("#submit");
    await page.waitForURL(/\/jobs\/[0-9a-z]{26}$/, { timeout: 60000 });
    result.deployment = page.url().split("/").pop();
    // Uploaded: the copy goes (a run left one in the temporary folder every time).
    fs.rmSync(serve, { recursive: true, force: true });
    await page.waitForSelector("#replicas:has-text('Live replicas: 2 of 2')", { timeout: 240000 });
    result.namedLink = await page.getAttribute("#named-link", "href");
    result.versionLink = await page.getAttribute("#address-link", "href");
    result.prediction = await predictAt(page.context(), result.versionLink, cfg.pixels);
    step("deployment answered");
    // Scaled to one replica: a new deployment of the same project, paid and signed; the old
    // one removed once the new one answers; the name's address answers throughout.
    await page.click("a[href='/deployments']");
    await page.waitForSelector(`#deployments button[data-scale='${result.deployment}']`, { timeout: 15000 });
    // The prediction above, counted by the gateway and written to the bucket (every 10 s).
    // (The page, its favicon and the prediction: two requests or more, none failed.)
    await page.waitForSelector(`#deployments [data-figures='${result.deployment}'] >> text=/[2-9] requests · 0 errors/`, { timeout: 40000 });
    result.deploymentFigures = await text(page, `#deployments [data-figures='${result.deployment}']`);
    await shoot(page, "deployments");
    if (cfg.tutorialOnly) {
      // The pool's two miners hold the deployment: removed as it is.
      await page.click(`#deployments button[data-remove='${result.deployment}']`);
      await page.waitForSelector(`#deployments tr:has(a[href='/jobs/${result.deployment}']) [data-state=cancelled]`, { timeout: 30000 });
    }
    if (!cfg.tutorialOnly) {
    await page.fill(`#deployments input[data-scale-count='${result.deployment}']`, "1");
    await page.click(`#deployments button[data-scale='${result.deployment}']`);
    await page.waitForSelector("[role=status]:has-text('Scaled digits-web to 1')", { timeout: 240000 });
    const scaled = await text(page, "[role=status]:has-text('Scaled digits-web')");
    result.scaled = (/deployment ([0-9a-z]{26}) serves/.exec(scaled) || [])[1] || null;
    await page.waitForSelector(`#deployments tr:has(a[href='/jobs/${result.deployment}']) [data-state=cancelled]`, { timeout: 30000 });
    result.scaledPrediction = await predictAt(page.context(), result.namedLink, cfg.pixels);
    step("deployment scaled");
    await page.waitForSelector(`#deployments button[data-remove='${result.scaled}']`, { timeout: 15000 });
    await page.click(`#deployments button[data-remove='${result.scaled}']`);
    await page.waitForSelector(`#deployments tr:has(a[href='/jobs/${result.scaled}']) [data-state=cancelled]`, { timeout: 30000 });
    }
    step("deployment removed");
    await page.click("a[href='/jobs']");
    await page.waitForSelector(`#jobs a[href='/jobs/${result.job}']`, { timeout: 15000 });
    await shoot(page, "jobs");
    await page.click("a[href='/pool']");
    await page.waitForSelector("table", { timeout: 15000 });
    result.poolRows = await page.$$eval("table tr", (rows) => rows.map((r) => [...r.children].map((c) => c.textContent.trim())));
    await shoot(page, "pool");
    result.wallet = await page.evaluate(() => window.__wallet.log);
    if (cfg.tutorialOnly) return;

    // Accessibility: every page, scanned by axe-core (a context that lets its script in).
    const state = await owner.storageState();
    const scan = await newContext(browser, { account: cfg.owner, startChain: "0x7a69", knownChains: ["0x7a69"] }, { storageState: state, bypassCSP: true });
    const sp = await scan.newPage();
    for (const p of ["/signin", "/jobs", `/jobs/${result.job}`, "/new", "/data", "/deployments", "/pool"]) {
      await sp.goto(cfg.base + p);
      await sp.waitForSelector("main :is(h1)", { timeout: 15000 });
      await sp.waitForLoadState("networkidle").catch(() => undefined);
      await sp.addScriptTag({ path: require.resolve("axe-core/axe.min.js") });
      const v = await sp.evaluate(async () => (await window.axe.run(document, { resultTypes: ["violations"] })).violations.map((x) => ({ id: x.id, impact: x.impact, help: x.help, nodes: x.nodes.length })));
      result.axe.push({ page: p, violations: v });
    }
    await scan.close();
    step("accessibility scanned");

    // The wrong chain: the user declines switching the wallet to the pool's chain.
    const wrong = await newContext(browser, { account: cfg.other, startChain: "0x1", rejectChain: true });
    const wp = await wrong.newPage();
    watchConsole(wp, "wrong-chain");
    await signIn(wp, cfg.base);
    await wp.waitForSelector("[role=alert]", { timeout: 30000 });
    result.refusals.wrongChain = (await text(wp, "[role=alert]")).trim();
    result.refusals.wrongChainUrl = wp.url();
    await shoot(wp, "signin-refused");
    await wrong.close();

    // Another wallet opens the owner's job URL: nothing of the job is shown.
    const other = await newContext(browser, { account: cfg.other, startChain: "0x7a69", knownChains: ["0x7a69"] });
    const op = await other.newPage();
    watchConsole(op, "other");
    await signIn(op, cfg.base);
    await op.waitForURL(/\/jobs$/, { timeout: 30000 });
    await op.goto(`${cfg.base}/jobs/${result.job}`);
    await op.waitForSelector("main h1", { timeout: 15000 });
    result.refusals.otherJob = { title: await text(op, "main h1"), text: await text(op, "main"), log: await op.$("#log") !== null };
    result.refusals.otherLogs = await op.evaluate(async (id) => {
      const t = JSON.parse(localStorage.getItem("aic.session")).token;
      const r = await fetch(`/v1/jobs/${id}/logs`, { headers: { authorization: `Bearer ${t}` } });
      return { status: r.status, body: await r.text() };
    }, result.job);
    // A wallet without the AIC a job costs is told so before anything is sent.
    if (cfg.script) {
      await op.goto(`${cfg.base}/new`);
      await op.setInputFiles("#script", cfg.script);
      await op.waitForSelector("#quote:has-text('Quote:')", { timeout: 15000 });
      await op.click("#submit");
      await op.waitForSelector("[role=alert]", { timeout: 30000 });
      result.refusals.noAic = (await text(op, "[role=alert]")).trim();
      result.refusals.noAicSends = await op.evaluate(() => window.__wallet.log.sends.length + window.__wallet.log.approvals.length);
    }
    await other.close();
    step("refusals");

    // Time to first render of the jobs page, for a wallet with 200 jobs.
    const many = await newContext(browser, { account: cfg.many, startChain: "0x7a69", knownChains: ["0x7a69"] });
    const mp = await many.newPage();
    await signIn(mp, cfg.base);
    await mp.waitForURL(/\/jobs$/, { timeout: 30000 });
    await mp.goto("about:blank");
    const t0 = Date.now();
    await mp.goto(cfg.base + "/jobs");
    await mp.waitForFunction(() => document.querySelectorAll("#jobs tbody tr").length >= 200, null, { timeout: 60000 });
    result.firstRenderMs = Date.now() - t0;
    result.rows = await mp.evaluate(() => document.querySelectorAll("#jobs tbody tr").length);
    step("200 jobs rendered");
    // A running job's page shows a line as it is printed, from the host's live feed: before
    // the chunk it is in is stored (10 s later).
    if (cfg.live) {
      const env = { ...process.env };
      for (const [k, v] of Object.entries(cfg.live.env)) {
        if (v === null) delete env[k];
        else env[k] = v;
      }
      const argv = cfg.live.argv;
      result.live = { job: require("child_process").execFileSync(argv[0], argv.slice(1), { env }).toString().trim() };
      await mp.goto(`${cfg.base}/jobs/${result.live.job}`);
      await mp.waitForSelector("#state [data-state=running]", { timeout: 30000 });
      fs.writeFileSync(cfg.live.start, "");
      await mp.waitForSelector("#log:has-text('hello-live')", { timeout: 30000 });
      result.live.shown = await text(mp, "#log");
      result.live.stored = await mp.evaluate(async (id) => {
        const t = JSON.parse(localStorage.getItem("aic.session")).token;
        const r = await fetch(`/v1/jobs/${id}/logs`, { headers: { authorization: `Bearer ${t}` } });
        return (await r.json()).chunks.length;
      }, result.live.job);
      fs.writeFileSync(cfg.live.end, "");
      await mp.waitForSelector("#state [data-state=succeeded]", { timeout: 30000 });
      result.live.final = await text(mp, "#log");
      step("live log");
    }
    await many.close();
  } catch (e) {
    result.error = e && e.stack ? e.stack : String(e);
    // What each open page showed when it stopped.
    result.failure = [];
    for (const [i, c] of browser.contexts().entries()) {
      for (const [j, p] of c.pages().entries()) {
        const shot = path.join(cfg.out, `${cfg.prefix || "webapp"}-failure-${i}-${j}.png`);
        await p.screenshot({ path: shot, fullPage: true }).catch(() => undefined);
        result.failure.push({ url: p.url(), main: await p.textContent("main").catch(() => null), shot });
      }
    }
  } finally {
    await browser.close();
    console.log(JSON.stringify(result));
  }
}

main();
