// Runs docs/CLIENTS.md's browser example of the JavaScript client (shell/client-js) in
// chromium against a live server: it publishes and consumes, each message processed once.
//
// node examples.mjs <page url on the server> <ws url> <client module path> <chromium path>
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const [pageUrl, wsUrl, modulePath, executablePath] = process.argv.slice(2);
const source = readFileSync(modulePath, "utf8");
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
try {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  const result = await page.evaluate(async ({ source, wsUrl }) => {
    const { FerryClient } = await import("data:text/javascript;base64," + btoa(source));
    const within = (promise, ms, what) => Promise.race([promise, new Promise((_, reject) => setTimeout(() => reject(new Error("timed out: " + what)), ms))]);
    // docs/CLIENTS.md's example: publish and consume, every message once, in order per key.
    const ferry = new FerryClient({ urls: [wsUrl] });
    const seen = [];
    let allSeen;
    const three = new Promise((resolve) => (allSeen = resolve));
    await ferry.subscribe("js-orders", "web", async (m) => { seen.push(m.body.n); if (seen.length === 3) allSeen(); }, { from: "earliest" });
    const ids = [];
    for (const n of [1, 2, 3]) ids.push((await ferry.publish("js-orders", { n }, { key: "customer-1" })).id);
    await within(three, 10000, "three messages");
    await new Promise((resolve) => setTimeout(resolve, 200)); // a repeat would show up by now
    ferry.close();
    return { ids, seen };
  }, { source, wsUrl });
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
