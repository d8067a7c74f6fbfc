// The JavaScript client against a live server (node --experimental-websocket --test test/client.test.mjs).
// FERRY_URL names it; it must run with `ack_timeout_ms` well under a second (the Rust test
// shell/tests/js_client.rs starts one so and runs this file).
import { test } from "node:test";
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";
import { FerryClient, FerryError } from "../ferry-client.js";

const url = process.env.FERRY_URL;
if (!url) throw new Error("FERRY_URL must name a running server (ws://host:port/ws)");
const fast = { urls: url, backoff: { initialMs: 20, maxMs: 200 } };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const unique = (name) => `${name}-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;

/** `promise`, or a failure naming `what` after `ms`. */
function within(promise, ms, what) {
  return Promise.race([promise, sleep(ms).then(() => Promise.reject(new Error(`timed out waiting for ${what}`)))]);
}

async function until(condition, what, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

test("every publish resolves with its id, and a subscriber gets each message once, in key order, acked", async () => {
  const topic = unique("orders");
  const client = new FerryClient(fast);
  const seen = [];
  await client.subscribe(topic, "billing", (m) => seen.push([m.key, m.body.n, m.id]), { from: "earliest" });
  const answers = await Promise.all(Array.from({ length: 40 }, (_, n) => client.publish(topic, { n }, { key: `k${n % 3}` })));
  assert.deepEqual(new Set(answers.map((a) => a.id)).size, 40, "forty ids");
  await until(() => seen.length === 40, "forty messages");
  assert.deepEqual(seen.map(([, n]) => n).sort((a, b) => a - b), Array.from({ length: 40 }, (_, n) => n));
  for (const key of ["k0", "k1", "k2"]) {
    const ids = seen.filter(([k]) => k === key).map(([, , id]) => id);
    assert.deepEqual(ids, [...ids].sort((a, b) => a - b), `key ${key} in id order`);
  }
  client.close();
  // All were acked: another member of the group gets nothing, even past the ack timeout.
  const other = new FerryClient(fast);
  const late = [];
  await other.subscribe(topic, "billing", (m) => late.push(m.id));
  await sleep(1_200);
  other.close();
  assert.deepEqual(late, []);
});

test("a refused publish rejects with the server's code; a body that is no JSON value is refused on the call", async () => {
  const client = new FerryClient(fast);
  await assert.rejects(client.publish("bad topic", 1), (e) => e instanceof FerryError && e.code === "bad_frame");
  await assert.rejects(client.publish("fine", undefined), (e) => e.code === "bad_body");
  const { id } = await client.publish(unique("fine"), 1);
  assert.equal(id, 1, "the client goes on after a refusal");
  client.close();
});

test("the publish buffer is bounded, and closing abandons what waits", async () => {
  const client = new FerryClient({ urls: "ws://127.0.0.1:1/ws", publish: { bufferedMax: 2 } });
  const first = client.publish("t", 1);
  const second = client.publish("t", 2);
  await assert.rejects(client.publish("t", 3), (e) => e.code === "buffer_full");
  assert.equal(client.unansweredPublishes, 2);
  client.close();
  await assert.rejects(first, (e) => e.code === "abandoned");
  await assert.rejects(second, (e) => e.code === "abandoned");
  await assert.rejects(client.publish("t", 4), (e) => e.code === "closed");
});

test("a redelivery of a message the application holds is not handed over again", async () => {
  const topic = unique("held");
  const client = new FerryClient(fast);
  const handed = [];
  await client.subscribe(topic, "slow", (m) => handed.push(m), { from: "earliest", autoAck: false });
  await client.publish(topic, { n: 1 });
  await until(() => handed.length === 1, "the message");
  await sleep(1_500); // three ack timeouts: the server redelivers it, the client drops it
  assert.equal(handed.length, 1, "handed over once");
  client.ack(handed[0]);
  await sleep(800);
  assert.equal(handed.length, 1, "acked: nothing more");
  client.close();
});

test("a handler that throws gives the message back, and it comes again", async () => {
  const topic = unique("retry");
  const client = new FerryClient(fast);
  const attempts = [];
  await client.subscribe(topic, "g", (m) => {
    attempts.push(m.attempt);
    if (attempts.length === 1) throw new Error("not yet");
  }, { from: "earliest" });
  await client.publish(topic, "x");
  await until(() => attempts.length === 2, "a second handing");
  assert.deepEqual(attempts, [1, 2]);
  client.close();
});

test("a pulling member starts its group at the earliest id and gets each message once", async () => {
  const topic = unique("pull");
  const publisher = new FerryClient(fast);
  for (let n = 0; n < 12; n++) await publisher.publish(topic, { n });
  const sent = [];
  // A WebSocket that notes the op of every frame sent.
  class Noting extends globalThis.WebSocket {
    send(text) {
      sent.push(JSON.parse(text).op);
      super.send(text);
    }
  }
  const client = new FerryClient({ ...fast, WebSocket: Noting });
  const seen = [];
  await client.subscribe(topic, "pulling", (m) => seen.push(m.body.n), { from: "earliest", pull: { max: 3, waitMs: 200 } });
  for (let n = 12; n < 20; n++) await publisher.publish(topic, { n });
  await until(() => seen.length === 20, "twenty messages");
  await sleep(300);
  assert.deepEqual(seen, Array.from({ length: 20 }, (_, n) => n));
  assert.equal(sent.filter((op) => op === "sub").length, 1, `${sent}`);
  assert.ok(sent.filter((op) => op === "pull").length >= 3, `${sent}`);
  client.close();
  publisher.close();
});

test("a subscription refused for good rejects the call", async () => {
  const topic = unique("conflict");
  const a = new FerryClient(fast);
  await a.subscribe(topic, "g", () => {}, { filter: { key_prefix: "a" } });
  const b = new FerryClient(fast);
  await assert.rejects(b.subscribe(topic, "g", () => {}, { filter: { key_prefix: "b" } }), (e) => e.code === "conflict");
  await assert.rejects(a.subscribe(topic, "g", () => {}), (e) => e.code === "already_subscribed");
  a.close();
  b.close();
});

test("a lost connection is reopened: subscriptions and unanswered publishes go on", async () => {
  const topic = unique("reconnect");
  const sockets = [];
  // A WebSocket that remembers its instances, so the test can cut one.
  class Recorded extends globalThis.WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const client = new FerryClient({ ...fast, WebSocket: Recorded });
  const states = [];
  client.on("state", ({ state }) => states.push(state));
  const seen = [];
  await client.subscribe(topic, "g", (m) => seen.push(m.body), { from: "earliest" });
  await client.publish(topic, 1);
  // The publish goes out, then the connection closes: its answer cannot come back on it.
  const second = client.publish(topic, 2);
  sockets[0].close();
  assert.equal((await within(second, 5_000, "the publish sent again on the new connection")).id, 2);
  await until(() => seen.length === 2, "both messages");
  assert.deepEqual(seen, [1, 2]);
  assert.ok(sockets.length >= 2, "a second connection");
  assert.deepEqual(states.slice(0, 4), ["connecting", "connected", "disconnected", "connecting"]);
  client.close();
});

test("readLatest pages through the newest message of each key, and refuses an unknown topic", async () => {
  const topic = unique("orders");
  const client = new FerryClient(fast);
  const newest = new Map();
  for (let n = 0; n < 60; n += 1) {
    const { id } = await client.publish(topic, { n }, { key: `order-${n % 12}` });
    newest.set(`order-${n % 12}`, { id, n });
    if (n % 7 === 0) await client.publish(topic, { n, without: "key" });
  }
  const latest = await within(client.readLatest(topic), 10_000, "readLatest");
  assert.deepEqual(new Map(latest.map((m) => [m.key, { id: m.id, n: m.body.n }])), newest);
  assert.deepEqual(latest.map((m) => m.id), [...latest.map((m) => m.id)].sort((a, b) => a - b), "in id order");
  const pages = [];
  await within(client.readLatest(topic, { keys: ["order-3", "order-4", "nope"], onPage: (messages) => pages.push(messages) }), 10_000, "readLatest of keys");
  assert.deepEqual(pages.flat().map((m) => m.key).sort(), ["order-3", "order-4"]);
  await assert.rejects(client.readLatest(unique("nothing")), (e) => e instanceof FerryError && e.code === "no_such_topic");
  client.close();
});

test("every method and property the TypeScript types declare exists", () => {
  const types = readFileSync(new URL("../ferry-client.d.ts", import.meta.url), "utf8");
  const body = types.slice(types.indexOf("export class FerryClient"));
  const declared = [...body.matchAll(/^  (?:readonly )?([a-zA-Z]+)[(<:]/gm)].map((m) => m[1]);
  assert.ok(declared.length >= 10, `declared: ${declared}`);
  const client = new FerryClient({ urls: "ws://127.0.0.1:1/ws" });
  for (const name of declared) assert.ok(name in client, `FerryClient has no ${name}`);
  client.close();
});
