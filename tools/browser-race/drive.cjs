// Drives headless Chromium through the browser race's page (tools/browser-race/race.html),
// writes its result as JSON and prints it as markdown tables (also written beside the JSON,
// .md). Exits 0 only when the page finished and every pair of contestants agrees within
// TOLERANCE (relative L2 over every logit). Run by tools/browser-race.sh:
//
//   node tools/browser-race/drive.cjs URL OUT.json TIMEOUT_SECONDS
//
// playwright-core comes from NODE_PATH (it never downloads a browser: Debian's chromium).
// After the transformers.js baseline harness (../shared/tools/tjs-baseline/drive.cjs).
const { chromium } = require("playwright-core");
const fs = require("fs");

const TOLERANCE = 1e-4;
const [url, outJson, timeoutArg] = process.argv.slice(2);
const timeout = Number(timeoutArg || 3600) * 1000;
const names = { ours: "roformer-wgpu (WebGPU)", "tjs-webgpu": "transformers.js WebGPU", "tjs-wasm": "transformers.js wasm" };

function tables(r) {
  const shapes = Object.keys(r.shapes);
  const cs = Object.keys(r.load_ms);
  const ms = (x) => (x === undefined ? "–" : x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(1)} ms`);
  const ratio = (a, b) => (a && b ? (a / b).toFixed(2) : "–");
  const lines = [];
  const rivals = cs.filter((c) => c !== "ours" && cs.includes("ours"));
  lines.push(`| batch × length | ${cs.map((c) => names[c]).join(" | ")} |` +
    rivals.map((c) => ` ours / ${c} (time) | ${c} / ours (speed) |`).join(""));
  lines.push("|---".repeat(1 + cs.length + 2 * rivals.length) + "|");
  for (const s of shapes) {
    const m = r.shapes[s].median_ms;
    lines.push(`| ${s.replace("x", " × ")} | ${cs.map((c) => ms(m[c])).join(" | ")} |` +
      rivals.map((c) => ` ${ratio(m.ours, m[c])} | ${ratio(m[c], m.ours)}× |`).join(""));
  }
  lines.push("");
  lines.push(`First run of each shape (compiling and planning included), and loading the model:`);
  lines.push("");
  lines.push(`| batch × length | ${cs.map((c) => names[c]).join(" | ")} |`);
  lines.push("|---".repeat(1 + cs.length) + "|");
  for (const s of shapes) lines.push(`| ${s.replace("x", " × ")} | ${cs.map((c) => ms(r.shapes[s].first_ms[c])).join(" | ")} |`);
  lines.push(`| load | ${cs.map((c) => ms(r.load_ms[c])).join(" | ")} |`);
  lines.push("");
  lines.push("Agreement (relative L2 error; max absolute difference): every logit between libraries, the first sequence's against PyTorch:");
  lines.push("");
  const pairs = Object.keys(r.shapes[shapes[0]].agreement);
  lines.push(`| batch × length | ${pairs.join(" | ")} |`);
  lines.push("|---".repeat(1 + pairs.length) + "|");
  for (const s of shapes) {
    const a = r.shapes[s].agreement;
    lines.push(`| ${s.replace("x", " × ")} | ${pairs.map((p) => `${a[p].rel_l2.toExponential(1)}; ${a[p].max_abs.toExponential(1)}`).join(" | ")} |`);
  }
  return lines.join("\n");
}

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
    const page = await browser.newPage();
    page.on("console", (m) => {
      const text = m.text();
      if (text.startsWith("RACE ") || m.type() === "error") console.log(`${m.type() === "log" ? "" : `[page ${m.type()}] `}${text}`.slice(0, 3000));
    });
    page.on("pageerror", (e) => console.log(`[page exception] ${e.message}`));
    page.on("crash", () => { failure = "the page crashed"; });
    page.on("request", (r) => { if (!/^(http:\/\/127\.0\.0\.1|blob:|data:)/.test(r.url())) console.log(`[external request] ${r.url()}`); });
    const started = Date.now();
    await page.goto(url);
    try {
      await page.waitForFunction(() => window.race && window.race.done, null, { timeout, polling: 1000 });
    } catch (e) {
      failure = failure || `no result within ${timeout / 1000} s`;
    }
    const r = failure ? null : await page.evaluate(() => window.race);
    if (r) {
      r.chromium = browser.version();
      r.url = url;
      r.page_seconds = (Date.now() - started) / 1000;
      fs.writeFileSync(outJson, JSON.stringify(r, null, 1));
      if (r.error) failure = `the page failed: ${r.error}`;
    }
    if (r && !r.error) {
      const md = tables(r);
      fs.writeFileSync(outJson.replace(/\.json$/, "") + ".md", md + "\n");
      console.log(`\nChromium ${r.chromium}, adapter ${JSON.stringify(r.adapter)}, ${JSON.stringify(r.versions)}, ` +
        `${r.page_seconds.toFixed(0)} s in the page\n\n${md}\n`);
      for (const [s, v] of Object.entries(r.shapes)) {
        for (const [pair, a] of Object.entries(v.agreement)) {
          if (!pair.includes("pytorch") && !(a.rel_l2 <= TOLERANCE)) failure = `${s}: ${pair} differ by ${a.rel_l2} (over ${TOLERANCE})`;
        }
      }
    }
    console.log(`browser race: ${failure ? "FAILED: " + failure : "done"}; ${outJson}`);
  } finally {
    await browser.close();
  }
  process.exit(failure ? 1 : 0);
}

main().catch((e) => {
  console.log(`browser race: FAILED: ${e.stack || e}`);
  process.exit(1);
});
