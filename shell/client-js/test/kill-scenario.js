// A publisher and a subscriber of the JavaScript client at work while the server is killed
// (SIGKILL) and restarted twice by whoever runs this (shell/tests/js_client.rs): in Node
// (kill-run.mjs) and in chromium (shell/tests/browser/js-client.mjs). `report(line)` tells
// the runner how many publishes were answered (for a person reading along: the runner kills
// by what the server counts). It publishes until the runner, done killing, publishes to
// topic `control` (at most `messagesMax`), so that however fast or slow the browser, the
// kills meet publishes under way.
// Resolves with every publish's outcome, what the application was handed, and the drops seen.
// (A classic script body, not a module: the browser runner evaluates it as text.)
async function killScenario(FerryClient, url, report, { messagesMax = 50_000, keys = 5, inFlight = 20 } = {}) {
  const fast = { urls: url, backoff: { initialMs: 20, maxMs: 500 } };
  const subscriber = new FerryClient(fast);
  const publisher = new FerryClient(fast);
  let drops = 0;
  publisher.on("state", ({ state }) => state === "disconnected" && (drops += 1));
  const handed = [];
  await subscriber.subscribe("orders", "billing", (m) => handed.push([m.key, m.body.n]), { from: "earliest", window: 32 });
  let stop = false;
  await subscriber.subscribe("control", "scenario", () => (stop = true), { from: "earliest" });
  const outcomes = {};
  let answered = 0;
  let next = 0;
  // `inFlight` publishes at a time, as an application with concurrent requests would.
  const worker = async () => {
    while (!stop && next < messagesMax) {
      const n = next++;
      try {
        outcomes[n] = await publisher.publish("orders", { n }, { key: `k${n % keys}` });
      } catch (e) {
        outcomes[n] = { error: `${e.code}: ${e.message}` };
      }
      answered += 1;
      report(`answered ${answered}`);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  const deadline = Date.now() + 60_000;
  while (handed.length < next && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  await new Promise((resolve) => setTimeout(resolve, 300)); // a repeat would show up by now
  publisher.close();
  subscriber.close();
  return { outcomes, handed, drops };
}
