// Runs kill-scenario.js in Node: node --experimental-websocket test/kill-run.mjs <ws url>.
// Prints "answered N" lines as publishes are answered, then "result <json>".
import { readFileSync } from "node:fs";
import { FerryClient } from "../ferry-client.js";

const source = readFileSync(new URL("./kill-scenario.js", import.meta.url), "utf8");
const killScenario = new Function(`${source}; return killScenario;`)();
const result = await killScenario(FerryClient, process.argv[2], (line) => console.log(line));
console.log(`result ${JSON.stringify(result)}`);
