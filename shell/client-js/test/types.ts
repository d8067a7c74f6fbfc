// Compiled (never run) by shell/tests/js_client.rs with `tsc --noEmit --strict`: the types of
// ferry-client.d.ts describe the calls docs/CLIENTS.md shows.
import { FerryClient, FerryError, type Message } from "../ferry-client.js";

async function example(): Promise<number> {
  const ferry = new FerryClient({ urls: ["ws://127.0.0.1:7700/ws"], tokenSource: async () => "token", publish: { bufferedMax: 100 } });
  const off = ferry.on("state", ({ state, why }) => console.log(state, why ?? ""));
  ferry.on("error", ({ code, message }) => console.log(code, message));
  await ferry.subscribe("orders", "billing", async (m: Message) => {
    const order = m.body as { order: number };
    if (m.attempt > 3 || m.repaired) console.log(m.id, m.key, order.order, m.ts);
  }, { from: "earliest", window: 16, filter: { key_prefix: "customer-" }, coalesceMs: 500, autoAck: false });
  await ferry.subscribe("orders", "pulling", () => {}, { pull: { max: 10, waitMs: 5_000 } });
  const { id, topic } = await ferry.publish("orders", { order: 1, lines: [1, 2] }, { key: "customer-7" });
  try {
    await ferry.publish(topic, null);
  } catch (e) {
    if (e instanceof FerryError && e.code === "buffer_full") console.log(e.message);
  }
  const latest = await ferry.readLatest("orders", { keys: ["customer-7"] });
  console.log(latest.map((m) => [m.id, m.key, m.body, m.ts]));
  await ferry.readLatest("orders", { onPage: (page) => console.log(page.length) });
  off();
  ferry.unsubscribe("orders", "billing");
  ferry.setToken("fresh");
  const state: "disconnected" | "connecting" | "connected" | "closed" = ferry.state;
  console.log(state, ferry.producer, ferry.unansweredPublishes);
  ferry.close();
  return id;
}

export { example };
