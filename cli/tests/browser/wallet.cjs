// Drives aic's wallet page in headless Chromium with the injected wallet of provider.cjs.
//
// usage: NODE_PATH=contracts/node_modules node wallet.cjs URL RPC_URL SCENARIO_JSON SCREENSHOT.png
// SCENARIO: see provider.cjs; also switchTo (an account the user switches to mid-way).
// Prints one JSON line: {status, done, errors, waits, wallet: {sends, wrongChainSends, switched, added}}.
const { chromium } = require("playwright-core");
const { installWallet } = require("./provider.cjs");

async function main() {
  const [url, rpc, scenarioJson, shot] = process.argv.slice(2);
  const scenario = JSON.parse(scenarioJson);
  const browser = await chromium.launch({
    executablePath: process.env.AIC_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const result = { status: "", done: false, errors: [], waits: [], wallet: null };
  try {
    const context = await browser.newContext();
    await context.addInitScript(installWallet, { rpc, scenario });
    const page = await context.newPage();
    await page.goto(url);
    if ((scenario.wallets || []).length > 0) {
      await page.click('#wallets button[data-wallet="MetaMask"]', { timeout: 30000 });
    }
    const text = () => page.textContent("#status");
    const cls = () => page.getAttribute("#status", "class");
    let switched = false;
    let retries = (scenario.rejectSignOnce ? 1 : 0) + (scenario.holdPayment ? 1 : 0);
    for (;;) {
      await page.waitForSelector("#status.done, #status.error, #status.wait:not(:has(+ #wallets:not([hidden])))", { timeout: 120000 });
      const c = await cls();
      const t = await text();
      if (c === "done") break;
      if (c === "wait" && scenario.switchTo && !switched) {
        result.waits.push(t);
        switched = true;
        await page.evaluate((a) => window.__wallet.switchAccount(a), scenario.switchTo);
        await page.waitForFunction((old) => document.querySelector("#status").textContent !== old, t, { timeout: 30000 });
        continue;
      }
      if (c === "error" && retries > 0) {
        result.errors.push(t);
        retries -= 1;
        // The held payment: the chain includes it now, and the user tries again.
        if (scenario.holdPayment && t.includes("not mined")) await page.evaluate(() => window.__wallet.mine());
        await page.click("#go");
        await page.waitForFunction(() => document.querySelector("#status").className !== "error", null, { timeout: 30000 });
        continue;
      }
      if (c === "error") result.errors.push(t);
      if (c === "wait") result.waits.push(t);
      break;
    }
    result.status = await text();
    result.done = (await cls()) === "done";
    result.wallet = await page.evaluate(() => window.__wallet.log);
    if (shot) await page.screenshot({ path: shot });
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
  process.exit(result.done ? 0 : 1);
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
