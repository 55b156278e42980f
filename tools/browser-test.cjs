// Drives headless Chromium through the web example's self-test (examples/web/app.js, ?test):
// prints every check the page reports, saves a screenshot, exits 0 only when the page says
// every check passed. Run by tools/browser-test.sh, which installs what it needs:
//
//   node tools/browser-test.cjs URL SCREENSHOT.png TIMEOUT_SECONDS
//
// playwright-core comes from NODE_PATH (it never downloads a browser: Debian's chromium).
const { chromium } = require("playwright-core");

const [url, screenshot, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg || 900) * 1000;

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--enable-unsafe-webgpu",
      // This machine has no network: no background connections to refuse.
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--disable-quic", "--no-first-run",
    ],
  });
  let failure = null;
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 1300 } });
    page.on("console", (m) => {
      const text = m.text();
      if (text.startsWith("ROFORMER-") || m.type() === "error" || m.type() === "warning") {
        console.log(m.type() === "log" ? text : `[page ${m.type()}] ${text}`);
      }
    });
    page.on("pageerror", (e) => console.log(`[page exception] ${e.message}`));
    page.on("crash", () => { failure = "the page crashed"; });
    const started = Date.now();
    await page.goto(url);
    try {
      await page.waitForFunction(() => window.roformerTest && window.roformerTest.done, null,
        { timeout, polling: 500 });
    } catch (e) {
      failure = failure || `no result within ${timeout / 1000} s (the page hung or failed before reporting)`;
    }
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
    const result = failure ? null : await page.evaluate(() => window.roformerTest);
    if (result && !result.passed) failure = "a check failed";
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const count = result ? `${result.results.filter((r) => r.passed).length}/${result.results.length} checks passed` : "no checks reported";
    console.log(`browser test: ${failure ? "FAILED: " + failure : "passed"} (${count}, ${seconds} s in the page)`);
  } finally {
    await browser.close();
  }
  process.exit(failure ? 1 : 0);
}

main().catch((e) => {
  console.log(`browser test: FAILED: ${e.stack || e}`);
  process.exit(1);
});
