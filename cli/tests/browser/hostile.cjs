// A deployed page as a stranger writes it, opened by a signed-in user of the web app in the
// same browser (Debian's Chromium through playwright-core, the injected wallet of
// provider.cjs): what of the app's it reaches from its own origin.
//
// usage: NODE_PATH=contracts/node_modules:functions/web/node_modules node hostile.cjs CONFIG_JSON
// CONFIG: {base (the app's origin), rpc, owner (the user's account), deployment (the hostile
//          deployment's address)}
// Prints one JSON line: {signedIn, page (what the hostile page found), app (the app's origin
// afterwards), cookies (the browser's), swAtOwnOrigin, error}.
const { chromium } = require("playwright-core");
const { installWallet, exposeRpc } = require("./provider.cjs");

const cfg = JSON.parse(process.argv[2]);
const result = { signedIn: false, page: null, app: null, cookies: null, swAtOwnOrigin: null, error: null };

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.AIC_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  try {
    const context = await browser.newContext();
    await exposeRpc(context);
    await context.addInitScript(installWallet, { rpc: cfg.rpc, scenario: { account: cfg.owner, startChain: "0x7a69", knownChains: ["0x7a69"] } });
    // The user signs in to the web app: its session is in the app origin's storage.
    const app = await context.newPage();
    await app.goto(cfg.base + "/jobs");
    await app.waitForURL(/\/signin\?next=/);
    await app.click("#signin");
    await app.waitForURL(/\/jobs$/, { timeout: 30000 });
    result.signedIn = await app.evaluate(() => !!localStorage.getItem("aic.session"));
    // Then opens a link to a stranger's deployment.
    const page = await context.newPage();
    await page.goto(`${cfg.deployment}?app=${encodeURIComponent(cfg.base)}`);
    await page.waitForFunction(() => window.result, null, { timeout: 30000 });
    result.page = await page.evaluate(() => window.result);
    // Its service worker works at its own origin (so the test could see one elsewhere).
    await page.goto(cfg.deployment + "anything");
    result.swAtOwnOrigin = await page.textContent("body");
    // The app afterwards: no worker of the stranger's, no cookie, still signed in and working.
    await app.goto(cfg.base + "/jobs");
    await app.waitForSelector("h1", { timeout: 15000 });
    result.app = await app.evaluate(async () => ({
      workers: (await navigator.serviceWorker.getRegistrations()).map((r) => r.scope),
      cookie: document.cookie,
      session: !!localStorage.getItem("aic.session"),
      path: location.pathname,
      title: document.querySelector("h1").textContent,
    }));
    result.cookies = (await context.cookies()).map((c) => ({ name: c.name, domain: c.domain }));
  } finally {
    await browser.close();
  }
}

main()
  .catch((e) => { result.error = String(e && e.stack || e); })
  .finally(() => { console.log(JSON.stringify(result)); });
