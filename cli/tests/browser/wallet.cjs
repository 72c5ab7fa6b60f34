// Drives aic's wallet page in headless Chromium with an injected EIP-1193 provider
// (window.ethereum) that forwards to anvil, whose dev accounts are unlocked: the stand-in
// for Metamask, which cannot be installed here.
//
// usage: NODE_PATH=contracts/node_modules node wallet.cjs URL RPC_URL ACCOUNT SCREENSHOT.png
const { chromium } = require("playwright-core");

async function main() {
  const [url, rpc, account, shot] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.AIC_CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  try {
    const context = await browser.newContext();
    await context.addInitScript(({ rpc, account }) => {
      let id = 0;
      window.ethereum = {
        isMetaMask: true,
        async request({ method, params }) {
          if (method === "eth_requestAccounts" || method === "eth_accounts") return [account];
          const r = await fetch(rpc, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params: params || [] }),
          });
          const j = await r.json();
          if (j.error) throw new Error(j.error.message);
          return j.result;
        },
      };
    }, { rpc, account });
    const page = await context.newPage();
    await page.goto(url);
    await page.waitForSelector("#status.done, #status.error", { timeout: 60000 });
    const text = await page.textContent("#status");
    if (shot) await page.screenshot({ path: shot });
    console.log(text);
    const ok = await page.$("#status.done");
    process.exit(ok ? 0 : 1);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
