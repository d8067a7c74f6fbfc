// Types of ferry-client.js (docs/CLIENTS.md tells what each call promises).

export type ErrorCode =
  | "bad_frame" | "unknown_op" | "no_such_topic" | "not_subscribed" | "too_large" | "unauthorized" | "forbidden" | "overloaded" | "conflict" | "internal" | "unavailable"
  | "buffer_full" | "bad_body" | "abandoned" | "closed" | "already_subscribed" | "bad_config"
  | (string & {});

export class FerryError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string);
}

export type Json = null | boolean | number | string | Json[] | { [name: string]: Json };

export interface BackoffOptions {
  /** First reconnect delay's cap (100). */
  initialMs?: number;
  /** Largest cap (10,000). */
  maxMs?: number;
  /** A connection that lasted this long resets the backoff (5,000). */
  healthyAfterMs?: number;
}

export interface PublishOptions {
  /** Publishes sent and unanswered at a time (64). */
  inFlightMax?: number;
  /** Publishes waiting for their answer, at most (10,000): past it `publish` rejects `buffer_full`. */
  bufferedMax?: number;
  /** Bytes of those, at most (16 MiB). */
  bufferedBytesMax?: number;
  /** A publish unanswered this long on a live connection is sent again (30,000). */
  answerTimeoutMs?: number;
}

export interface FerryClientOptions {
  /** One or more `ws://host:port/ws`, tried in turn; a cluster's `welcome` adds its nodes. */
  urls: string | string[];
  /** Sent in a `hello` on every connection. */
  token?: string;
  /** Asked before every connection for a fresh token (JWTs expire); nothing is sent before it. */
  tokenSource?: () => string | Promise<string>;
  /** The `producer` of this client's publishes (random by default). Never share one between
   * two clients publishing at once; to go on from an earlier run, give `firstSeq` above its seqs. */
  producer?: string;
  firstSeq?: number;
  backoff?: BackoffOptions;
  /** A silent connection gets a `ping` (15,000). */
  pingIntervalMs?: number;
  /** A `ping` unanswered this long ends the connection (10,000). */
  pongTimeoutMs?: number;
  /** A connection not open (or without its token) after this long is given up (10,000). */
  connectTimeoutMs?: number;
  publish?: PublishOptions;
  /** Ids per group remembered as handed over (100,000). */
  dedupeWindowIds?: number;
  /** Acks waiting go out in one frame once this many wait (64), else at the end of the turn. */
  ackBatchMax?: number;
  /** A WebSocket class, where there is no global one. */
  WebSocket?: unknown;
}

export type Filter = { key_prefix: string } | { field: string; equals: Json };

export interface SubscribeOptions {
  /** Where a new group starts ("latest"); ignored for a group that exists. */
  from?: "latest" | "earliest" | number;
  /** Messages unacked in flight to this connection, at most (the server's default 64). */
  window?: number;
  filter?: Filter;
  /** The new group coalesces: a message of a key settles the older ones of its key still
   * waiting that were stored at most this many ms before it (docs/PROTOCOL.md). */
  coalesceMs?: number;
  /** Ack when the handler returns, give back (nack) when it throws (true). */
  autoAck?: boolean;
  /** Fetch and hand over what a `prev` says was not delivered to this client (false). Only
   * for messages without keys: see docs/CLIENTS.md. */
  repairGaps?: boolean;
  /** Receive by long-poll: up to `max` messages a `pull`, each waiting up to `waitMs`. */
  pull?: { max: number; waitMs: number };
}

/** The newest message of a key, as `readLatest` gives it. */
export interface LatestMessage {
  id: number;
  key: string;
  body: Json;
  /** When stored, ms since the epoch. */
  ts: number;
}

export interface ReadLatestOptions {
  /** Only these keys (all keys of the topic when left out). */
  keys?: string[];
  /** Each page's messages, in id order, as they come (then the promise resolves with nothing). */
  onPage?: (messages: LatestMessage[]) => void;
}

export interface Message {
  topic: string;
  group: string;
  id: number;
  key?: string;
  body: Json;
  attempt: number;
  /** When stored, ms since the epoch. */
  ts: number;
  /** Fetched to fill a gap, not delivered by the group: nothing to ack. */
  repaired: boolean;
}

export type ConnState = "disconnected" | "connecting" | "connected" | "closed";

export interface ClientEvents {
  state: { state: ConnState; why?: string };
  error: { code: string; message: string };
  subscribed: { topic: string; group: string };
}

export class FerryClient {
  constructor(options: FerryClientOptions);
  readonly state: ConnState;
  readonly producer: string;
  readonly unansweredPublishes: number;
  /** Returns a function that removes the listener. */
  on<E extends keyof ClientEvents>(event: E, listener: (value: ClientEvents[E]) => void): () => void;
  publish(topic: string, body: Json, options?: { key?: string }): Promise<{ topic: string; id: number }>;
  subscribe(topic: string, group: string, handler: (message: Message) => void | Promise<void>, options?: SubscribeOptions): Promise<void>;
  unsubscribe(topic: string, group: string): void;
  /** The newest message of each key of `topic`, read page by page with `latest`. */
  readLatest(topic: string, options?: ReadLatestOptions & { onPage?: undefined }): Promise<LatestMessage[]>;
  readLatest(topic: string, options: ReadLatestOptions & { onPage: (messages: LatestMessage[]) => void }): Promise<void>;
  ack(message: Message): void;
  nack(message: Message, delayMs?: number): void;
  setToken(token: string): void;
  close(): void;
}
