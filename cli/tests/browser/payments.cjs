// One payment per job in the web app, in headless Chromium with the injected wallet of
// provider.cjs on anvil: a payment sped up in the wallet, one slow to be mined while the tab is
// reloaded and the job tried again, and one cancelled in the wallet then paid again. Each
// job is submitted once; the Rust test (`webapp.rs`) reads the chain. With `mode: "reclaim"`:
// the Jobs page lists a deposit due back, and its Reclaim button takes it back.
//
// usage: NODE_PATH=contracts/node_modules node payments.cjs CONFIG_JSON
// CONFIG: {base, rpc, owner, script, mode?}
// Prints one JSON line: {jobs: {spedUp, reloaded, cancelled}, wallets: {...: log}, said: {...}, error}
const { chromium } = require("playwright-core");
const { installWallet, exposeRpc } = require("./provider.cjs");

const cfg = JSON.parse(process.argv[2]);
const result = { jobs: {}, wallets: {}, said: {}, error: null };

async function session(browser, scenario) {
  const context = await browser.newContext();
  await exposeRpc(context);
  await context.addInitScript(installWallet, { rpc: cfg.rpc, scenario: { account: cfg.owner, startChain: "0x7a69", knownChains: ["0x7a69"], ...scenario } });
  const page = await context.newPage();
  page.on("pageerror", (e) => { result.error = result.error || `page: ${e.message}`; });
  await page.goto(cfg.base + "/jobs");
  await page.waitForURL(/\/signin\?next=/);
  await page.click("#signin");
  await page.waitForURL(/\/jobs$/, { timeout: 30000 });
  return { context, page };
}

async function newJob(page) {
  await page.click("a[href='/new']");
  await page.setInputFiles("#script", cfg.script);
  await page.fill("#hours", "0.01");
  await page.dispatchEvent("#hours", "change");
  await page.waitForSelector("#quote:has-text('Quote:')", { timeout: 15000 });
  await page.click("#submit");
}

async function submitted(page) {
  await page.waitForURL(/\/jobs\/[0-9a-z]{26}$/, { timeout: 90000 });
  return page.url().split("/").pop();
}

const log = (page) => page.evaluate(() => window.__wallet.log);

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.AIC_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  try {
    if (cfg.mode === "reclaim") {
      const { context, page } = await session(browser, {});
      await page.waitForSelector("#due-deposits button[data-reclaim]", { timeout: 30000 });
      result.said.due = (await page.textContent("#due-deposits")).trim();
      await page.click("#due-deposits button[data-reclaim]");
      await page.waitForSelector("[role=status]:has-text('Reclaimed')", { timeout: 60000 });
      result.said.reclaimed = (await page.textContent("[role=status]:has-text('Reclaimed')")).trim();
      await page.waitForSelector("#due-deposits:empty", { state: "attached", timeout: 30000 });
      result.wallets.reclaim = await log(page);
      await context.close();
    } else {
      await pay(browser);
    }
  } catch (e) {
    result.error = result.error || String(e && e.stack || e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
}

async function pay(browser) {
  // Sped up in the wallet: the page follows the payment to its new hash.
  {
    const { context, page } = await session(browser, { speedUp: true });
    await newJob(page);
    result.jobs.spedUp = await submitted(page);
    result.wallets.spedUp = await log(page);
    await context.close();
  }
  // Slow to be mined: the tab is reloaded while the page waits, and the job tried again:
  // it follows the payment sent (nothing sent again) and goes on once it is mined.
  {
    const { context, page } = await session(browser, { holdPayment: true });
    await newJob(page);
    await page.waitForSelector("[role=status]:has-text('not mined yet'), [role=alert]:has-text('not mined yet')", { timeout: 60000 });
    await page.reload();
    await page.waitForSelector("#paid-notice", { timeout: 15000 });
    result.said.reloaded = (await page.textContent("#paid-notice")).trim();
    await page.setInputFiles("#script", cfg.script);
    await page.fill("#hours", "0.01");
    await page.dispatchEvent("#hours", "change");
    await page.click("#submit");
    await page.waitForSelector("[role=status]:has-text('not mined yet')", { timeout: 60000 });
    result.said.following = (await page.textContent("[role=status]:has-text('not mined yet')")).trim();
    await page.evaluate(() => window.__wallet.mine());
    result.jobs.reloaded = await submitted(page);
    result.wallets.reloaded = await log(page);
    await context.close();
  }
  // Cancelled in the wallet: nothing paid, said so; pressed again, it pays once more.
  {
    const { context, page } = await session(browser, { cancelPaymentOnce: true });
    await newJob(page);
    await page.waitForSelector("[role=alert]:has-text('cancelled in your wallet')", { timeout: 60000 });
    result.said.cancelled = (await page.textContent("[role=alert]:has-text('cancelled in your wallet')")).trim();
    await page.click("#submit");
    result.jobs.cancelled = await submitted(page);
    result.wallets.cancelled = await log(page);
    await context.close();
  }
}

main();
