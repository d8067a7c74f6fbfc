// Loads ferry's web console in Debian's chromium (driven by playwright-core) against a live
// server with traffic, and checks what a person would: the page shows the server ready, the
// published count moves between two looks, the groups table lists the test's group, and a
// trace lookup of a message just published finds it stored. Saves a screenshot.
//
// node console.mjs <console url> <topic> <id> <screenshot path> <chromium path>
import { chromium } from "playwright-core";

const [url, topic, id, screenshot, executablePath] = process.argv.slice(2);
const fail = (why) => { console.error("console test failed: " + why); process.exitCode = 1; };

const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1500 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("ready").textContent === "ready", null, { timeout: 15000 });
  const total = async () => Number((await page.textContent("#published-total")).replace(/,/g, ""));
  await page.waitForFunction(() => /\d/.test(document.getElementById("published-total").textContent), null, { timeout: 15000 });
  const before = await total();
  // Rates need two readings; numbers must move while the publisher runs.
  await page.waitForFunction(() => /\d/.test(document.getElementById("published-rate").textContent), null, { timeout: 15000 });
  await page.waitForFunction((seen) => Number(document.getElementById("published-total").textContent.replace(/,/g, "")) > seen, before, { timeout: 15000 });
  const after = await total();
  const rate = await page.textContent("#published-rate");
  const inFlight = await page.textContent("#in-flight-state");
  if (!/\d/.test(inFlight)) fail("the in-flight state card shows no bytes: " + inFlight);
  const groups = await page.textContent("#groups tbody");
  if (!groups.includes("console-group")) fail("the groups table does not list console-group: " + groups);
  await page.fill("#trace-topic", topic);
  await page.fill("#trace-id", String(id));
  await page.click("#trace-go");
  await page.waitForFunction(() => /stored in segment|failed/.test(document.getElementById("trace-result").textContent), null, { timeout: 15000 });
  const traced = await page.textContent("#trace-result");
  if (!traced.includes(`message ${id} of ${topic}: stored in segment`)) fail("the trace lookup did not find the message: " + traced);
  if (!traced.includes("stored ") || !traced.includes("recent events:")) fail("the trace shows no events: " + traced);
  // One more refresh so the charts hold a few points, then the picture.
  await page.waitForTimeout(2500);
  await page.screenshot({ path: screenshot, fullPage: true });
  if (errors.length) fail("script errors on the page: " + errors.join("; "));
  console.log(JSON.stringify({ before, after, rate, screenshot }));
} finally {
  await browser.close();
}
