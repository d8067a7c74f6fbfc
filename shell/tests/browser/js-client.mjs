// Runs the JavaScript client's kill scenario (shell/client-js/test/kill-scenario.js) in
// chromium against a live server that shell/tests/js_client.rs kills and restarts. Prints
// the page's "answered N" lines as they come, then "result <json>".
//
// node js-client.mjs <page url on the server> <ws url> <client module path> <scenario path> <chromium path>
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";

const [pageUrl, wsUrl, modulePath, scenarioPath, executablePath] = process.argv.slice(2);
// Encoded here, as UTF-8: the page's btoa takes only Latin-1 text.
const clientBase64 = readFileSync(modulePath).toString("base64");
const scenario = readFileSync(scenarioPath, "utf8");
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
try {
  const page = await browser.newPage();
  await page.exposeFunction("report", (line) => console.log(line));
  await page.goto(pageUrl);
  const result = await page.evaluate(async ({ clientBase64, scenario, wsUrl }) => {
    const { FerryClient } = await import("data:text/javascript;base64," + clientBase64);
    const killScenario = new Function(`${scenario}; return killScenario;`)();
    return killScenario(FerryClient, wsUrl, (line) => window.report(line));
  }, { clientBase64, scenario, wsUrl });
  console.log(`result ${JSON.stringify(result)}`);
} finally {
  await browser.close();
}
