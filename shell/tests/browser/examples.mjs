// Runs the browser client of docs/clients/ferry-client.js in chromium against a live
// server: it publishes and consumes (each message processed once, acked), and repairs a gap
// that `prev` reveals by fetching it from the server.
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
    const ferry = await FerryClient.connect(wsUrl);
    // Publish and consume: every message once, in order per key.
    const seen = [];
    let allSeen;
    const three = new Promise((resolve) => (allSeen = resolve));
    await ferry.subscribe("js-orders", "web", async (m) => { seen.push(m.body.n); if (seen.length === 3) allSeen(); });
    const ids = [];
    for (const n of [1, 2, 3]) ids.push(await ferry.publish("js-orders", { n }, { key: "customer-1" }));
    await within(three, 10000, "three messages");
    // A gap: a group whose filter passes nothing gets no deliveries; a msg frame claiming
    // prev 2 after the client processed id 1 makes it fetch id 2 from the server first.
    const gap = [];
    for (const n of [1, 2, 3]) await ferry.publish("js-gap", { n });
    await ferry.subscribe("js-gap", "repair", async (m) => gap.push([m.id, m.repaired === true]), { filter: { key_prefix: "none-" } });
    ferry.receive({ op: "msg", topic: "js-gap", group: "repair", id: 1, prev: 0, attempt: 1, body: { n: 1 }, ts: 0 });
    ferry.receive({ op: "msg", topic: "js-gap", group: "repair", id: 3, prev: 2, attempt: 1, body: { n: 3 }, ts: 0 });
    ferry.receive({ op: "msg", topic: "js-gap", group: "repair", id: 3, prev: 2, attempt: 2, body: { n: 3 }, ts: 0 });
    await within(new Promise((resolve) => { const check = () => (gap.length >= 3 ? resolve() : setTimeout(check, 20)); check(); }), 10000, "gap repair");
    await new Promise((resolve) => setTimeout(resolve, 200)); // a repeat would show up by now
    ferry.close();
    return { ids, seen, gap };
  }, { source, wsUrl });
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
