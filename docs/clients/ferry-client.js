// A small ferry client for browsers (and Node 22+, which has a global WebSocket), no
// dependencies. It does what docs/CLIENTS.md asks of every consumer: it drops ids it has
// already processed, repairs a gap that `prev` reveals with `fetch`, and acks each message
// once processed. Publishes carry `producer` + `seq`, so a retry after a lost answer is
// stored once.
//
//   import { FerryClient } from "./ferry-client.js";
//   const ferry = await FerryClient.connect("ws://127.0.0.1:7700/ws");
//   await ferry.subscribe("orders", "billing", async (m) => console.log(m.id, m.body));
//   const id = await ferry.publish("orders", { order: 1 }, { key: "customer-7" });

export class FerryClient {
  static async connect(url, { token } = {}) {
    const client = new FerryClient(url);
    await client.opened;
    if (token) await client.request({ op: "hello", token }); // answered only by an error
    return client;
  }

  constructor(url) {
    this.ws = new WebSocket(url);
    this.waiting = new Map(); // req -> { resolve, reject }
    this.consumers = new Map(); // "topic/group" -> handler of msg frames
    this.nextReq = 1;
    this.producer = "web-" + Math.random().toString(36).slice(2); // names this client's publishes
    this.nextSeq = 1;
    this.opened = new Promise((resolve, reject) => {
      this.ws.onopen = resolve;
      this.ws.onerror = () => reject(new Error(`cannot connect to ${url}`));
    });
    this.ws.onmessage = (event) => this.receive(JSON.parse(event.data));
  }

  receive(frame) {
    const waiter = frame.req !== undefined && this.waiting.get(frame.req);
    if (waiter) {
      this.waiting.delete(frame.req);
      if (frame.op === "error") waiter.reject(Object.assign(new Error(frame.message), { code: frame.code }));
      else waiter.resolve(frame);
    } else if (frame.op === "msg") {
      this.consumers.get(frame.topic + "/" + frame.group)?.(frame);
    } else if (frame.op === "error") {
      console.warn(`ferry: ${frame.code}: ${frame.message}`); // e.g. a bad ack, a dropped group
    }
  }

  /** Sends `frame` with a fresh `req`; resolves with the answer, rejects with an `error`. */
  request(frame) {
    const req = this.nextReq++;
    return new Promise((resolve, reject) => {
      this.waiting.set(req, { resolve, reject });
      this.ws.send(JSON.stringify({ ...frame, req }));
    });
  }

  /** Publishes `body`; resolves with its id once it is durable. Retries on `overloaded`. */
  async publish(topic, body, { key } = {}) {
    const frame = { op: "pub", topic, body, key, producer: this.producer, seq: this.nextSeq++ };
    for (;;) {
      try {
        return (await this.request(frame)).id;
      } catch (error) {
        if (error.code !== "overloaded" && error.code !== "unavailable") throw error;
        await new Promise((resolve) => setTimeout(resolve, 100)); // same producer + seq: stored once
      }
    }
  }

  /**
   * Joins `group` on `topic` and calls `process(message)` for each message once, in the order
   * the group receives them (a message repaired by `fetch` has `repaired: true`). A group with
   * a `filter` must apply it to repaired messages itself: `fetch` reads the whole topic.
   */
  async subscribe(topic, group, process, { from = "earliest", window = 64, filter } = {}) {
    let last = 0; // the last id processed (keep it durably to survive a restart)
    let chain = Promise.resolve();
    this.consumers.set(topic + "/" + group, (m) => {
      chain = chain.then(async () => {
        if (m.id <= last) return this.ack(topic, group, [m.id]); // a redelivery already processed
        if (last > 0 && m.prev > last) await this.repair(topic, last + 1, m.prev, process);
        await process(m);
        last = m.id;
        this.ack(topic, group, [m.id]);
      });
    });
    await this.request({ op: "sub", topic, group, from, window, filter });
  }

  /** Processes the stored messages with ids from..to (a gap), a `fetched` page at a time. */
  async repair(topic, from, to, process) {
    while (from <= to) {
      const page = await this.request({ op: "fetch", topic, from, to });
      if (page.messages.length === 0) return; // nothing more is stored in the range
      for (const m of page.messages) await process({ ...m, topic, repaired: true });
      from = page.messages[page.messages.length - 1].id + 1;
    }
  }

  ack(topic, group, ids) {
    this.ws.send(JSON.stringify({ op: "ack", topic, group, ids }));
  }

  close() {
    this.ws.close();
  }
}
