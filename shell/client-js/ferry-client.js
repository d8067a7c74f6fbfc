// ferry's client library for JavaScript: browsers, and Node (22+, or 20 with
// --experimental-websocket, or any WebSocket class passed as `WebSocket`). No dependencies.
//
// It keeps the protocol's promises for the application, as the Rust library does (both follow
// docs/CLIENTS.md): it connects and reconnects (exponential backoff with full jitter, across
// the URLs given and the nodes a cluster names), says hello with a token (fixed, or asked of
// `tokenSource` before each connection), pings a silent server and leaves one that does not
// answer; it publishes idempotently (its own `producer` and `seq`; unanswered publishes kept
// in a bounded buffer and sent again after a reconnect, a retryable error or a timeout, each
// call settling once); it subscribes again on every connection, hands each message of a group
// to the handler once and in order (a bounded window of ids), acks in batches (again after a
// reconnect), and repairs `prev` gaps with `fetch` where asked to.
//
//   import { FerryClient } from "./ferry-client.js";
//   const ferry = new FerryClient({ urls: ["ws://127.0.0.1:7700/ws"] });
//   await ferry.subscribe("orders", "billing", async (m) => console.log(m.id, m.body));
//   const { id } = await ferry.publish("orders", { order: 1 }, { key: "customer-7" });

/** An error a call ends with: the server's code (`forbidden`, `bad_frame`, ...) or the library's
 * (`buffer_full`, `bad_body`, `abandoned`, `closed`, `not_subscribed`, `already_subscribed`). */
export class FerryError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "FerryError";
    this.code = code;
  }
}

const DEFAULTS = {
  token: undefined,
  tokenSource: undefined,
  producer: undefined,
  firstSeq: 1,
  backoff: { initialMs: 100, maxMs: 10_000, healthyAfterMs: 5_000 },
  pingIntervalMs: 15_000,
  pongTimeoutMs: 10_000,
  connectTimeoutMs: 10_000,
  publish: { inFlightMax: 64, bufferedMax: 10_000, bufferedBytesMax: 16 << 20, answerTimeoutMs: 30_000 },
  dedupeWindowIds: 100_000,
  ackBatchMax: 64,
};

/** URLs kept, those given and those cluster nodes named, at most. */
const URLS_MAX = 64;
const RETRYABLE = new Set(["overloaded", "internal", "unavailable"]);
const randomBetween = (low, high) => low + Math.floor(Math.random() * (high - low + 1));

export class FerryClient {
  #o;
  #urls;
  #nextUrl = 0;
  #ws = null;
  /** Bumped per connection: events of an earlier socket are ignored. */
  #generation = 0;
  #state = "disconnected";
  #ready = false;
  #since = 0;
  #heardAt = 0;
  #pingSentAt = null;
  #pings = 0;
  #retryAt = 0;
  #attempt = 0;
  #token;
  #tokenFresh = false;
  #timer = null;
  #listeners = new Map();
  #producer;
  #nextSeq;
  /** seq -> { frame, bytes, resolve, reject, sent, dueAt, answerBy }, in seq order. */
  #publishes = new Map();
  #bufferedBytes = 0;
  /** "topic\u0000group" -> Subscription. */
  #subs = new Map();
  #subsMade = 0;
  #acksDue = false;
  #retrySubsAt = null;
  /** `latest` reads under way: req of the page asked -> read (see `readLatest`). */
  #reads = new Set();
  #readsMade = 0;

  /** Starts connecting at once. `options.urls`: one or more `ws://host:port/ws`. */
  constructor(options) {
    const o = { ...DEFAULTS, ...options };
    o.backoff = { ...DEFAULTS.backoff, ...options?.backoff };
    o.publish = { ...DEFAULTS.publish, ...options?.publish };
    o.WebSocket = options?.WebSocket ?? globalThis.WebSocket;
    if (!o.WebSocket) throw new FerryError("bad_config", "no WebSocket: pass options.WebSocket (Node 20 needs --experimental-websocket)");
    const urls = typeof o.urls === "string" ? [o.urls] : [...(o.urls ?? [])];
    if (urls.length === 0) throw new FerryError("bad_config", "options.urls names no server");
    this.#o = o;
    this.#urls = urls;
    this.#token = o.token;
    this.#producer = o.producer ?? `js-${randomHex()}`;
    this.#nextSeq = o.firstSeq;
    this.#retryAt = Date.now();
    this.#schedule();
  }

  /** "disconnected", "connecting", "connected" or "closed" (for good). */
  get state() {
    return this.#state;
  }

  get producer() {
    return this.#producer;
  }

  /** Publishes waiting for their answer. */
  get unansweredPublishes() {
    return this.#publishes.size;
  }

  /** `state` ({ state, why }), `error` ({ code, message }: a server error that answers no call
   * of this client), `subscribed` ({ topic, group }, on every connection). */
  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return () => this.#listeners.get(event).delete(listener);
  }

  /** Publishes `body` (any JSON value); resolves with { topic, id } once stored, whatever
   * happens to connections meanwhile; rejects with a FerryError when refused or abandoned. */
  publish(topic, body, { key } = {}) {
    if (this.#state === "closed") return Promise.reject(new FerryError("closed", "the client is closed"));
    const text = body === undefined ? undefined : JSON.stringify(body);
    if (text === undefined) return Promise.reject(new FerryError("bad_body", "the body must be a JSON value"));
    const { bufferedMax, bufferedBytesMax } = this.#o.publish;
    const seq = this.#nextSeq;
    const frame = JSON.stringify({ op: "pub", req: seq, topic, body, key, producer: this.#producer, seq });
    const bytes = frame.length;
    if (this.#publishes.size >= bufferedMax || this.#bufferedBytes + bytes > bufferedBytesMax) {
      return Promise.reject(new FerryError("buffer_full", `${this.#publishes.size} publishes (${this.#bufferedBytes} bytes) wait for answers (publish.bufferedMax ${bufferedMax}, bufferedBytesMax ${bufferedBytesMax})`));
    }
    this.#nextSeq += 1;
    this.#bufferedBytes += bytes;
    const promise = new Promise((resolve, reject) => {
      this.#publishes.set(seq, { frame, bytes, resolve, reject, sent: false, dueAt: 0, answerBy: null });
    });
    this.#pump();
    this.#schedule();
    return promise;
  }

  /**
   * Joins `group` on `topic`, now and on every connection to come, and calls
   * `handler(message)` for each message once, one at a time, in the order the group delivers
   * them. A message is acked when the handler returns (or its promise resolves); a handler
   * that throws gives it back (`nack`), so it comes again. With `autoAck: false` the
   * application calls `ack(message)` / `nack(message)` itself. Resolves once the server took
   * the subscription; rejects if it refuses it for good (`forbidden`, `conflict`, `bad_frame`).
   * options: `from` ("latest" | "earliest" | id), `window`, `filter`, `coalesceMs` (the new
   * group's coalescing window: see docs/PROTOCOL.md), `autoAck` (true),
   * `repairGaps` (false: see docs/CLIENTS.md before turning it on), `pull` ({ max, waitMs }:
   * receive by long-poll; the first time it joins with `sub` so that a new group starts at
   * `from` with its filter, then leaves the push side with `unsub` and pulls).
   */
  subscribe(topic, group, handler, options = {}) {
    if (this.#state === "closed") return Promise.reject(new FerryError("closed", "the client is closed"));
    const name = `${topic}\u0000${group}`;
    if (this.#subs.has(name)) return Promise.reject(new FerryError("already_subscribed", `already subscribed to '${topic}' as '${group}'`));
    this.#subsMade += 1;
    const sub = new Subscription(topic, group, `s-${this.#subsMade}`, handler, options);
    this.#subs.set(name, sub);
    const answered = new Promise((resolve, reject) => (sub.answer = { resolve, reject }));
    if (this.#ready) this.#sendAll(sub.onConnected());
    return answered;
  }

  /**
   * Reads the newest message of each key of `topic` (only of `options.keys`, when given) with
   * `latest`, page by page from the last id of the one before; a page lost with its connection
   * is asked again on the next, one refused for now after a pause. With `options.onPage`, each
   * page's messages go to it and the promise resolves when the read is over; without, it
   * resolves with the newest message of each key read ({ id, key, body, ts }, in id order).
   * Rejects when the server refuses the read for good (`forbidden`, ...) or the client closes.
   */
  readLatest(topic, options = {}) {
    if (this.#state === "closed") return Promise.reject(new FerryError("closed", "the client is closed"));
    this.#readsMade += 1;
    const read = { topic, keys: options.keys, onPage: options.onPage, since: 0, req: null, pages: 0, retryAt: 0, id: this.#readsMade, newest: new Map() };
    const done = new Promise((resolve, reject) => Object.assign(read, { resolve, reject }));
    this.#reads.add(read);
    if (this.#ready) this.#askPage(read);
    this.#schedule();
    return done;
  }

  #askPage(read) {
    read.pages += 1;
    read.req = `latest-${read.id}-${read.pages}`;
    const frame = { op: "latest", req: read.req, topic: read.topic, since: read.since };
    if (read.keys !== undefined) frame.keys = read.keys;
    this.#send(frame);
  }

  #onLatest(frame) {
    const read = [...this.#reads].find((r) => r.req === frame.req);
    if (!read) return;
    read.req = null;
    const messages = (frame.messages ?? []).map((m) => ({ id: m.id, key: m.key, body: m.body, ts: m.ts }));
    if (messages.length === 0) {
      this.#reads.delete(read);
      read.resolve(read.onPage ? undefined : [...read.newest.values()].sort((a, b) => a.id - b.id));
      return;
    }
    read.since = messages[messages.length - 1].id;
    if (read.onPage) read.onPage(messages);
    else for (const m of messages) read.newest.set(m.key, m);
    this.#askPage(read);
  }

  /** Leaves the group: acks still waiting go out first; nothing more is handed over. */
  unsubscribe(topic, group) {
    const name = `${topic}\u0000${group}`;
    const sub = this.#subs.get(name);
    if (!sub) throw new FerryError("not_subscribed", `not subscribed to '${topic}' as '${group}'`);
    this.#subs.delete(name);
    sub.closed = true;
    if (this.#ready) {
      this.#sendAll(sub.ackFrames());
      this.#send({ op: "unsub", req: `u-${sub.req}`, topic, group });
    }
  }

  /** Processing of `message` is done (only with `autoAck: false`). */
  ack(message) {
    const sub = this.#subs.get(`${message.topic}\u0000${message.group}`);
    if (!sub) throw new FerryError("not_subscribed", `not subscribed to '${message.topic}' as '${message.group}'`);
    if (!sub.ack(message.id)) return;
    if (this.#ready && sub.pendingAcks.length >= this.#o.ackBatchMax) this.#sendAll(sub.ackFrames());
    else this.#acksDue = true;
    this.#schedule();
  }

  /** Gives `message` back, to come again after `delayMs` (and be handed over again). */
  nack(message, delayMs = 0) {
    const sub = this.#subs.get(`${message.topic}\u0000${message.group}`);
    if (!sub) throw new FerryError("not_subscribed", `not subscribed to '${message.topic}' as '${message.group}'`);
    // Not connected: the server redelivers it at its ack timeout anyway.
    if (sub.nack(message.id) && this.#ready) this.#send({ op: "nack", topic: message.topic, group: message.group, ids: [message.id], delay_ms: delayMs });
  }

  /** A token for the connection being opened (the answer to `tokenSource`), or a newer one at
   * any time: an open connection says hello again. */
  setToken(token) {
    this.#token = token;
    this.#tokenFresh = true;
    if (this.#state === "connected" && !this.#ready) this.#startSession();
    else if (this.#ready) this.#send({ op: "hello", token });
  }

  /** Closes for good, after sending the acks still waiting; unanswered publishes reject
   * `abandoned` (each may or may not be stored). */
  close() {
    if (this.#ready) for (const sub of this.#subs.values()) this.#sendAll(sub.ackFrames());
    if (this.#state !== "closed") this.#endForGood("closed by the application");
  }

  // --- connections -------------------------------------------------------------------------

  #connect() {
    const url = this.#urls[this.#nextUrl % this.#urls.length];
    this.#nextUrl += 1;
    this.#setState("connecting");
    this.#since = Date.now();
    const generation = ++this.#generation;
    if (this.#o.tokenSource) {
      this.#tokenFresh = false;
      Promise.resolve()
        .then(() => this.#o.tokenSource())
        // A late answer, for a connection given up meanwhile, is dropped.
        .then((token) => generation === this.#generation && this.#state !== "closed" && this.setToken(token))
        .catch((e) => this.#emit("error", { code: "token_source", message: String(e?.message ?? e) }));
    }
    let ws;
    try {
      ws = new this.#o.WebSocket(url);
    } catch (e) {
      this.#lost(`could not connect to ${url}: ${e?.message ?? e}`);
      return;
    }
    this.#ws = ws;
    ws.onopen = () => generation === this.#generation && this.#opened();
    ws.onmessage = (event) => generation === this.#generation && this.#onFrame(event.data);
    ws.onclose = (event) => {
      if (generation !== this.#generation) return;
      const why = this.#state === "connecting" ? `could not connect to ${url}` : event.code ? `closed by the server (${event.code}${event.reason ? ": " + event.reason : ""})` : "connection lost";
      this.#lost(why);
    };
    ws.onerror = () => {}; // a close follows
  }

  #opened() {
    this.#setState("connected");
    this.#since = this.#heardAt = Date.now();
    this.#pingSentAt = null;
    // With a token source, nothing goes out before this connection's token: ops before a
    // hello would be refused `unauthorized`.
    if (!this.#o.tokenSource || this.#tokenFresh) this.#startSession();
    this.#schedule();
  }

  /** The connection is usable: hello, subscriptions, waiting acks and publishes go out. */
  #startSession() {
    this.#ready = true;
    if (this.#token !== undefined) this.#send({ op: "hello", token: this.#token });
    for (const sub of this.#subs.values()) this.#sendAll(sub.onConnected());
    for (const read of this.#reads) if (read.retryAt <= Date.now()) this.#askPage(read);
    this.#pump();
    this.#schedule();
  }

  /** Closes the socket without hearing of it again. */
  #drop() {
    this.#generation += 1;
    try {
      this.#ws?.close();
    } catch {
      // closing a socket that never opened
    }
    this.#ws = null;
  }

  #lost(why) {
    if (this.#state === "closed") return;
    const lastedMs = this.#state === "connected" ? Date.now() - this.#since : 0;
    this.#drop();
    this.#ready = false;
    for (const p of this.#publishes.values()) p.sent = false;
    for (const sub of this.#subs.values()) sub.onDisconnected();
    for (const read of this.#reads) read.req = null;
    const { initialMs, maxMs, healthyAfterMs } = this.#o.backoff;
    if (lastedMs >= healthyAfterMs) this.#attempt = 0;
    const capMs = Math.min(maxMs, initialMs * 2 ** Math.min(this.#attempt, 30));
    this.#attempt += 1;
    this.#retryAt = Date.now() + randomBetween(0, capMs);
    this.#setState("disconnected", why);
    this.#schedule();
  }

  #endForGood(why) {
    this.#drop();
    this.#ready = false;
    this.#state = "closed";
    clearTimeout(this.#timer);
    const abandoned = [...this.#publishes.values()];
    this.#publishes.clear();
    this.#bufferedBytes = 0;
    for (const p of abandoned) p.reject(new FerryError("abandoned", `${why}; the publish may or may not be stored`));
    for (const sub of this.#subs.values()) {
      sub.closed = true;
      sub.answer?.reject(new FerryError("closed", why));
    }
    for (const read of this.#reads) read.reject(new FerryError("closed", why));
    this.#reads.clear();
    this.#emit("state", { state: "closed", why });
  }

  #setState(state, why) {
    this.#state = state;
    this.#emit("state", { state, why });
  }

  // --- time --------------------------------------------------------------------------------

  /** One timer, set for the earliest thing due. */
  #schedule() {
    if (this.#state === "closed") return;
    clearTimeout(this.#timer);
    const due = this.#nextDue();
    if (due === null) return;
    this.#timer = setTimeout(() => this.#onTimeout(), Math.max(0, due - Date.now()));
  }

  #nextDue() {
    const o = this.#o;
    switch (this.#state) {
      case "disconnected":
        return this.#retryAt;
      case "connecting":
        return this.#since + o.connectTimeoutMs;
      case "connected": {
        const due = [this.#pingSentAt === null ? this.#heardAt + o.pingIntervalMs : this.#pingSentAt + o.pongTimeoutMs];
        if (!this.#ready) due.push(this.#since + o.connectTimeoutMs);
        else {
          if (this.#acksDue) due.push(0);
          if (this.#retrySubsAt !== null) due.push(this.#retrySubsAt);
          for (const read of this.#reads) if (read.req === null) due.push(read.retryAt);
          const inFlight = [...this.#publishes.values()].filter((p) => p.sent).length;
          for (const p of this.#publishes.values()) {
            if (p.sent) due.push(p.answerBy);
            else if (inFlight < o.publish.inFlightMax) due.push(p.dueAt);
          }
        }
        return Math.min(...due);
      }
      default:
        return null;
    }
  }

  #onTimeout() {
    const now = Date.now();
    const o = this.#o;
    if (this.#state === "disconnected" && now >= this.#retryAt) this.#connect();
    else if (this.#state === "connecting" && now >= this.#since + o.connectTimeoutMs) this.#lost(`not connected within ${o.connectTimeoutMs} ms (connectTimeoutMs)`);
    else if (this.#state === "connected" && !this.#ready && now >= this.#since + o.connectTimeoutMs) this.#lost(`no token within ${o.connectTimeoutMs} ms (connectTimeoutMs)`);
    else if (this.#state === "connected" && this.#pingSentAt !== null && now >= this.#pingSentAt + o.pongTimeoutMs) this.#lost(`no answer to a ping within ${o.pongTimeoutMs} ms (pongTimeoutMs)`);
    else if (this.#state === "connected" && this.#pingSentAt === null && now >= this.#heardAt + o.pingIntervalMs) {
      this.#pingSentAt = now;
      this.#pings += 1;
      this.#send({ op: "ping", req: `ping-${this.#pings}` });
    }
    if (this.#ready) {
      if (this.#acksDue) {
        this.#acksDue = false;
        for (const sub of this.#subs.values()) this.#sendAll(sub.ackFrames());
      }
      if (this.#retrySubsAt !== null && now >= this.#retrySubsAt) {
        this.#retrySubsAt = null;
        for (const sub of this.#subs.values()) this.#sendAll(sub.retryFrames());
      }
      for (const read of this.#reads) if (read.req === null && now >= read.retryAt) this.#askPage(read);
      // A publish unanswered this long on a live connection is sent again (same seq: stored once).
      for (const p of this.#publishes.values()) if (p.sent && now >= p.answerBy) p.sent = false;
      this.#pump();
    }
    this.#schedule();
  }

  // --- frames ------------------------------------------------------------------------------

  #send(frame) {
    this.#ws?.send(typeof frame === "string" ? frame : JSON.stringify(frame));
  }

  #sendAll(frames) {
    for (const frame of frames) this.#send(frame);
  }

  /** Sends what publishing has ready: in seq order, at most `inFlightMax` unanswered. */
  #pump() {
    if (!this.#ready) return;
    const now = Date.now();
    let inFlight = [...this.#publishes.values()].filter((p) => p.sent).length;
    for (const p of this.#publishes.values()) {
      if (inFlight >= this.#o.publish.inFlightMax) break;
      if (p.sent || p.dueAt > now) continue;
      p.sent = true;
      p.answerBy = now + this.#o.publish.answerTimeoutMs;
      inFlight += 1;
      this.#send(p.frame);
    }
  }

  #onFrame(text) {
    this.#heardAt = Date.now();
    this.#pingSentAt = null;
    let frame;
    try {
      frame = JSON.parse(text);
      if (typeof frame !== "object" || frame === null || typeof frame.op !== "string") throw new Error("not an object with an op");
    } catch (e) {
      this.#lost(`the server broke the protocol: ${e.message}`);
      return;
    }
    switch (frame.op) {
      case "puback":
        this.#settle(frame.req, (p) => p.resolve({ topic: frame.topic, id: frame.id }));
        this.#pump();
        break;
      case "error":
        this.#onError(frame);
        break;
      case "suback": {
        const sub = [...this.#subs.values()].find((s) => s.req === frame.req);
        if (sub) {
          this.#sendAll(sub.onSuback());
          sub.answer?.resolve();
          sub.answer = null;
          this.#emit("subscribed", { topic: sub.topic, group: sub.group });
        }
        break;
      }
      case "pulled": {
        const sub = [...this.#subs.values()].find((s) => s.pullReq === frame.req);
        if (sub) this.#sendAll([sub.joinFrame()]);
        break;
      }
      case "msg": {
        const sub = this.#subs.get(`${frame.topic}\u0000${frame.group}`);
        if (sub) this.#apply(sub.onMsg(frame, this.#o.dedupeWindowIds));
        break;
      }
      case "latest":
        this.#onLatest(frame);
        break;
      case "fetched": {
        const sub = [...this.#subs.values()].find((s) => s.repair?.req === frame.req);
        if (sub) this.#apply(sub.onFetched(frame.messages ?? [], this.#o.dedupeWindowIds));
        break;
      }
      case "welcome":
        // A cluster node names the others: when this one goes, any of them will do.
        for (const url of frame.nodes ?? []) if (this.#urls.length < URLS_MAX && !this.#urls.includes(url)) this.#urls.push(url);
        break;
      default:
        break; // pong, and whatever a later server adds
    }
    this.#schedule();
  }

  /** Settles the publish answered by `req` (its seq), once. */
  #settle(req, how) {
    const p = typeof req === "number" ? this.#publishes.get(req) : undefined;
    if (!p) return;
    this.#publishes.delete(req);
    this.#bufferedBytes -= p.bytes;
    how(p);
  }

  #onError(frame) {
    const { req, code, message } = frame;
    if (typeof req === "string") return this.#onRequestError(frame);
    if (typeof req === "number" && this.#publishes.has(req)) {
      if (!RETRYABLE.has(code)) {
        this.#settle(req, (p) => p.reject(new FerryError(code, message)));
        this.#pump();
        return;
      }
      const p = this.#publishes.get(req);
      p.sent = false;
      p.dueAt = Date.now() + (frame.retry_after_ms ?? randomBetween(50, 300));
      // This node has no leader for the topic (cut off, or an election): another may have one.
      if (code === "unavailable" && this.#urls.length > 1) this.#lost(`the node cannot serve now (${message}): trying another`);
      return;
    }
    // The token was refused: trying again with it cannot help.
    if (code === "unauthorized" && req === undefined) return this.#endForGood(`the server refused the token: ${message}`);
    this.#emit("error", { code, message });
  }

  /** An error answering a subscription's `sub` or a repair's `fetch`. */
  #onRequestError(frame) {
    const { req, code, message } = frame;
    const retryAt = Date.now() + (frame.retry_after_ms ?? randomBetween(50, 300));
    const read = [...this.#reads].find((r) => r.req === req);
    if (read) {
      read.req = null;
      if (RETRYABLE.has(code)) read.retryAt = retryAt;
      else {
        this.#reads.delete(read);
        read.reject(new FerryError(code, message));
      }
      return;
    }
    const sub = [...this.#subs.values()].find((s) => s.req === req || s.pullReq === req);
    if (sub) {
      if (RETRYABLE.has(code)) {
        sub.subRefused = true;
        this.#retrySubsAt = Math.min(this.#retrySubsAt ?? retryAt, retryAt);
      } else {
        this.#subs.delete(`${sub.topic}\u0000${sub.group}`);
        sub.closed = true;
        sub.answer?.reject(new FerryError(code, message));
        if (!sub.answer) this.#emit("error", { code, message: `the subscription to '${sub.topic}' as '${sub.group}' was refused: ${message}` });
      }
      return;
    }
    const repairing = [...this.#subs.values()].find((s) => s.repair?.req === req);
    if (!repairing) return;
    if (RETRYABLE.has(code)) {
      repairing.repair.asked = false;
      this.#retrySubsAt = Math.min(this.#retrySubsAt ?? retryAt, retryAt);
    } else {
      // The gap cannot be read: what waited behind it goes on; the application hears why.
      this.#emit("error", { code, message: `a gap's repair failed: ${message}` });
      this.#apply(repairing.endRepair(this.#o.dedupeWindowIds));
    }
  }

  /** Sends what a subscription asked for and hands its messages to its handler. */
  #apply({ frames, messages, sub }) {
    if (this.#ready) this.#sendAll(frames);
    for (const message of messages) sub.queue.push(message);
    if (sub.pendingAcks.length > 0) this.#acksDue = true;
    if (messages.length > 0 && !sub.running) this.#runHandler(sub);
  }

  /** Hands the queued messages to the handler, one at a time. */
  async #runHandler(sub) {
    sub.running = true;
    while (sub.queue.length > 0 && !sub.closed) {
      const message = sub.queue.shift();
      let ok = true;
      try {
        await sub.handler(message);
      } catch (e) {
        ok = false;
        this.#emit("error", { code: "handler", message: `the handler threw on ${message.topic} id ${message.id}: ${e?.message ?? e}; given back` });
      }
      if (message.repaired || !sub.autoAck || sub.closed || this.#state === "closed") continue;
      if (ok) this.ack(message);
      else this.nack(message);
    }
    sub.running = false;
  }

  #emit(event, value) {
    for (const listener of this.#listeners.get(event) ?? []) {
      try {
        listener(value);
      } catch {
        // a listener's failure is its own
      }
    }
  }
}

/** One subscription: what was handed over, acks waiting, a gap being repaired. */
class Subscription {
  constructor(topic, group, req, handler, options) {
    this.topic = topic;
    this.group = group;
    this.req = req;
    this.handler = handler;
    this.from = options.from ?? "latest";
    this.window = options.window;
    this.filter = options.filter;
    this.coalesceMs = options.coalesceMs;
    this.autoAck = options.autoAck ?? true;
    this.repairGaps = options.repairGaps ?? false;
    this.pull = options.pull;
    this.pullReq = `p-${req}`;
    /** A pulling member joined with `sub` once (its group exists): it pulls from now on. */
    this.pullJoined = false;
    this.answer = null;
    this.closed = false;
    this.subRefused = false;
    this.lastId = 0;
    /** Ids handed over, the newest `dedupeWindowIds` (oldest first); ids at or below
     * `forgottenUpTo` count as handed over too. */
    this.handed = new Set();
    this.handedOrder = [];
    this.forgottenUpTo = 0;
    this.unacked = new Set();
    this.pendingAcks = [];
    this.repair = null;
    this.held = [];
    this.queue = [];
    this.running = false;
  }

  subFrame() {
    const frame = { op: "sub", req: this.req, topic: this.topic, group: this.group, from: this.from };
    if (this.window !== undefined) frame.window = this.window;
    if (this.filter !== undefined) frame.filter = this.filter;
    if (this.coalesceMs !== undefined) frame.coalesce_ms = this.coalesceMs;
    return frame;
  }

  /** How this member asks for messages: `sub`, or once its group exists and it pulls, `pull`. */
  joinFrame() {
    if (!this.pull || !this.pullJoined) return this.subFrame();
    return { op: "pull", req: this.pullReq, topic: this.topic, group: this.group, max: this.pull.max, wait_ms: this.pull.waitMs };
  }

  /** The `sub` was answered: a pulling member leaves the push side (what came in flight goes
   * back to the group) and pulls. */
  onSuback() {
    if (!this.pull) return [];
    this.pullJoined = true;
    return [{ op: "unsub", req: `u-${this.req}`, topic: this.topic, group: this.group }, this.joinFrame()];
  }

  /** The `sub` (or `pull`), acks that waited, a repair's fetch again: what a new connection needs. */
  onConnected() {
    this.subRefused = false;
    const frames = [this.joinFrame(), ...this.ackFrames()];
    if (this.repair) this.repair.asked = false;
    frames.push(...this.askRepair());
    return frames;
  }

  onDisconnected() {
    if (this.repair) this.repair.asked = false;
  }

  retryFrames() {
    const frames = [];
    if (this.subRefused) {
      this.subRefused = false;
      frames.push(this.joinFrame());
    }
    frames.push(...this.askRepair());
    return frames;
  }

  ackFrames() {
    if (this.pendingAcks.length === 0) return [];
    const ids = this.pendingAcks;
    this.pendingAcks = [];
    return [{ op: "ack", topic: this.topic, group: this.group, ids }];
  }

  ack(id) {
    if (!this.unacked.delete(id)) return false;
    this.pendingAcks.push(id);
    return true;
  }

  nack(id) {
    if (!this.unacked.delete(id)) return false;
    this.handed.delete(id);
    return true;
  }

  wasHanded(id) {
    return id <= this.forgottenUpTo || this.handed.has(id);
  }

  onMsg(frame, windowIds) {
    const effects = { frames: [], messages: [], sub: this };
    const message = { topic: frame.topic, group: frame.group, id: frame.id, key: frame.key, body: frame.body, attempt: frame.attempt, ts: frame.ts, repaired: false };
    if (this.repair) this.held.push({ prev: frame.prev, message });
    else this.take(frame.prev, message, windowIds, effects);
    return effects;
  }

  take(prev, message, windowIds, effects) {
    const { id } = message;
    if (this.wasHanded(id)) {
      // A redelivery: the application has it. If it acked it already, that ack was lost
      // with a connection: ack again.
      if (!this.unacked.has(id)) this.pendingAcks.push(id);
      return;
    }
    if (this.repairGaps && this.lastId > 0 && prev > this.lastId) {
      this.repair = { from: this.lastId + 1, to: prev, req: `f-${this.req}-${id}`, asked: false };
      this.held.push({ prev, message });
      effects.frames.push(...this.askRepair());
      return;
    }
    this.unacked.add(id);
    this.hand(message, windowIds, effects);
  }

  hand(message, windowIds, effects) {
    this.lastId = Math.max(this.lastId, message.id);
    this.handed.add(message.id);
    this.handedOrder.push(message.id);
    while (this.handed.size > Math.max(1, windowIds)) {
      const oldest = this.handedOrder.shift();
      if (this.handed.delete(oldest)) this.forgottenUpTo = Math.max(this.forgottenUpTo, oldest);
    }
    effects.messages.push(message);
  }

  askRepair() {
    if (!this.repair || this.repair.asked) return [];
    this.repair.asked = true;
    return [{ op: "fetch", req: this.repair.req, topic: this.topic, from: this.repair.from, to: this.repair.to }];
  }

  onFetched(page, windowIds) {
    const effects = { frames: [], messages: [], sub: this };
    if (!this.repair) return effects;
    const { from, to } = this.repair;
    let last = null;
    for (const m of page.filter((m) => m.id >= from && m.id <= to)) {
      last = m.id;
      if (matches(this.filter, m) && !this.wasHanded(m.id)) {
        this.hand({ topic: this.topic, group: this.group, id: m.id, key: m.key, body: m.body, attempt: 1, ts: m.ts, repaired: true }, windowIds, effects);
      }
    }
    if (last !== null && last < to) {
      this.repair.from = last + 1;
      this.repair.asked = false;
      effects.frames.push(...this.askRepair());
      return effects;
    }
    // An empty page: nothing more is stored in the gap (retention, or not stored yet).
    const ended = this.endRepair(windowIds);
    effects.frames.push(...ended.frames);
    effects.messages.push(...ended.messages);
    return effects;
  }

  /** The repair ends (filled, or given up): the messages that waited are taken in order. */
  endRepair(windowIds) {
    const effects = { frames: [], messages: [], sub: this };
    if (!this.repair) return effects;
    this.lastId = Math.max(this.lastId, this.repair.to);
    this.repair = null;
    while (!this.repair && this.held.length > 0) {
      const { prev, message } = this.held.shift();
      this.take(prev, message, windowIds, effects);
    }
    return effects;
  }
}

/** The group's filter, applied to a fetched message (`fetch` reads the whole topic). */
function matches(filter, m) {
  if (!filter) return true;
  if (typeof filter.key_prefix === "string") return typeof m.key === "string" && m.key.startsWith(filter.key_prefix);
  if (typeof filter.field === "string") {
    let value = m.body;
    for (const name of filter.field.split(".")) value = value !== null && typeof value === "object" && !Array.isArray(value) ? value[name] : undefined;
    return value !== undefined && JSON.stringify(value) === JSON.stringify(filter.equals);
  }
  return true;
}

function randomHex() {
  const bytes = new Uint8Array(8);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}
