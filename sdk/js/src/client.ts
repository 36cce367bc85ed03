/**
 * {@link TetherClient}: the application's handle. Owns the reconnect loop and what outlives a
 * connection: durable positions, pending acks, topics, requests waiting for their answer,
 * the bindings' tokens.
 *
 * # States
 *
 * ```text
 *   idle ── connect() ──> connecting ── handshake ──> connected ──(lost: close, silence,
 *                             │ error                  ▲    │      disconnect 40xx/41xx)
 *                             v                        │    v
 *                   rejected promise, closed     handshake ok    reconnecting ──(backoff)──┐
 *                                                      └───────────────────────────────────┘
 *   42xx (4205 without getToken), reconnect off, or close() from any state ──> closed
 * ```
 *
 * A connection is a {@link Link} of one transport (`transport.ts`): WebSocket, or Server-Sent
 * Events when WebSocket fails or is blocked (`fallback.ts` decides which). Everything here is
 * the same over both.
 */

import { Backoff, type ReconnectPolicy } from "./backoff.js";
import { Dispatcher, type Endpoint, type FetchLike } from "./dispatch.js";
import { Emitter } from "./emitter.js";
import { Codes, codeGroup, shouldReconnect, TetherError } from "./errors.js";
import { Fallback } from "./fallback.js";
import { SseLink, sseUrlOf } from "./sse.js";
import type { ConnectRequest, End, Link, Opened, TransportName } from "./transport.js";
import { isBlocked, WebSocketLink, type WebSocketConstructor } from "./websocket.js";
import { payloadFields, toPayload, type Connected, type Payload, type Publication, type Push, type ServerFrame } from "./frames.js";
import { DEVICE_KEY, MemoryStore, seqKey, tokenSubject, type SeqStore } from "./store.js";
import { Tokens } from "./tokens.js";
import { topicProblem, Topics, type SubscribeRequest, type TopicEvent } from "./topics.js";
import { Requests } from "./requests.js";

/** One app this connection binds, with the user's token for it. */
export interface BindingOptions {
  app: string;
  token: string;
}

export interface ClientOptions {
  /** The gateway's WebSocket URL, `ws://host:port/ws` or `wss://...`. Required without `dispatch`. */
  url?: string;
  /**
   * The SSE stream of `url`; default: derived from it (`ws://host:port/ws` streams at
   * `http://host:port/v1/sse`, `wss` at `https`).
   */
  sseUrl?: string;
  /**
   * The transports to use, in order of preference (default `["websocket", "sse"]`): the
   * second is the fallback when the first fails `fallbackAfter` times in a row or is blocked.
   */
  transports?: TransportName[];
  /** Failures in a row of the first transport, without the server's word, before the fallback (default 2). */
  fallbackAfter?: number;
  /** Once on the fallback, how long before a reconnect tries the first transport again (default 5 minutes). */
  retryFirstTransportMs?: number;
  /** A dispatcher, `https://host/v1/dispatch`: asked before every round of connect attempts. */
  dispatch?: string;
  /** The client's zone, sent to the dispatcher (its nodes come first). */
  zone?: string;
  /** One or more apps to bind, each with a token for the user. */
  bindings: BindingOptions[];
  /** A stable id of this install; default: generated once and kept in `store`. */
  device?: string;
  /** The heartbeat interval proposed to the server (0: its default). The server's answer wins. */
  heartbeatMs?: number;
  /** Opening the socket and the handshake together, per attempt (default 10 s). */
  connectTimeoutMs?: number;
  /** Reconnect delays; a dispatcher's answer replaces them. */
  reconnect?: ReconnectPolicy;
  /** Where the device id and the last acked seqs are kept (default: in memory). */
  store?: SeqStore;
  /**
   * Fetches a new token for a binding from the business backend: called when the server
   * announces that a token expires (`expiring`), and before reconnecting after 4205.
   */
  getToken?: (app: string) => Promise<string>;
  /** Timeout of an upstream's answer when the call gives none (default 15 s). */
  upstreamTimeoutMs?: number;
  /**
   * A WebSocket implementation (Node 20: the `ws` package); default: the global one. Without
   * one, the client uses SSE alone (when `transports` allows it).
   */
  WebSocket?: WebSocketConstructor;
  /** A fetch implementation for the dispatcher and SSE; default: the global one. */
  fetch?: FetchLike;
}

/** Where the client stands. */
export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

/** What an upstream's webhook answered: its HTTP status and body. */
export interface UpstreamReply {
  app: string;
  status: number;
  payload: Payload;
}

/** The events of a {@link TetherClient}. */
export interface ClientEvents {
  /** The state changed. */
  state: { state: ConnectionState };
  /**
   * A handshake succeeded (the first one and every reconnect); `url` is the endpoint (for SSE,
   * the stream's URL), `transport` what carries it.
   */
  connected: Connected & { url: string; transport: TransportName };
  /** The transport changed (and before the first `connected`): `websocket` or `sse`. */
  transport: { transport: TransportName; previous: TransportName | undefined };
  /**
   * A connection ended, or a reconnect attempt failed. `code` is the server's code when it gave
   * one. When `reconnecting` is false, this is the last event and the state is `closed`.
   */
  disconnected: { code: number | undefined; reason: string; reconnecting: boolean; error: TetherError };
  /** A push. Ack durable ones (`seq` > 0) with {@link TetherClient.ack} once processed. */
  message: Push;
  /** A publication of a subscribed topic; publications are not acked. */
  publication: Publication;
  /**
   * A subscribe was answered. `recovery` `"too_old"`: publications after `since` up to
   * `offset` are lost (refetch them from the business); `"complete"`: they follow this event.
   */
  subscribed: Extract<TopicEvent, { type: "subscribed" }>;
  unsubscribed: Extract<TopicEvent, { type: "unsubscribed" }>;
  /** A subscribe was refused; with `retrying` (4301, busy) it is sent again later. */
  subscribeFailed: Extract<TopicEvent, { type: "subscribeFailed" }>;
  /** A binding's token expires at `expiresS` and there is no `getToken`: call `refresh`. */
  tokenExpiring: { app: string; expiresS: number };
  /** The server took a new token for `app`; reconnects use it. */
  tokenRefreshed: { app: string; expiresS: number };
  /** A new token did not take (4306, or `getToken` failed); the old one holds until it expires. */
  refreshFailed: { app: string; code: number | undefined; message: string; retrying: boolean };
  /** A request of this client was refused (43xx) and no promise was waiting for the answer. */
  error: TetherError;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
const DEFAULT_UPSTREAM_TIMEOUT_MS = 15_000;
const DEFAULT_SYNC_TIMEOUT_MS = 15_000;
const DEFAULT_FALLBACK_AFTER = 2;
const DEFAULT_RETRY_FIRST_TRANSPORT_MS = 5 * 60_000;

export class TetherClient extends Emitter<ClientEvents> {
  private stateValue: ConnectionState = "idle";
  private conn: Link | undefined;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly fetchImpl: FetchLike | undefined;
  private readonly fallback: Fallback;
  private transportValue: TransportName | undefined;
  private readonly store: SeqStore;
  private readonly backoff: Backoff;
  private readonly dispatcher: Dispatcher | undefined;
  private readonly topics = new Topics();
  private readonly requests = new Requests();
  private readonly tokens: Tokens;
  private device = "";
  private lastId = 0;
  /** The highest durable seq handed to the application, per app: resume point and duplicate filter. */
  private readonly handed = new Map<string, number>();
  /** The user each app is bound as (from `connected`, or the token before the first). */
  private readonly users = new Map<string, string>();
  /** The highest seq acked per app and not yet written to a connection. */
  private readonly pendingAcks = new Map<string, number>();
  /** The highest seq acked per app, as kept in the store. */
  private readonly acked = new Map<string, number>();
  /** Frames of requests made while no connection was up, sent at the next one. */
  private outbox: { id: number; op: string; fields: Record<string, unknown> }[] = [];
  /** Requests sent on the current connection whose answer is lost with it. */
  private sentRequests = new Set<number>();
  /** Whether the round of attempts under way is the first (connect()'s, which has no retry). */
  private firstRound = true;
  /** The URL of the connection up (or last up). */
  private currentUrl: string | undefined;
  /** The WebSocket URL of its endpoint: how the dispatcher knows it, whatever the transport. */
  private currentEndpoint: string | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  /** Subscribes refused as busy (4301), waiting to be sent again. */
  private readonly subscribeRetries = new Set<ReturnType<typeof setTimeout>>();
  private ackScheduled = false;
  private startedAt = 0;

  /**
   * A client, not connected yet: add listeners, then {@link TetherClient.connect}. Throws a
   * `config` {@link TetherError} for options it cannot work with.
   */
  constructor(private readonly options: ClientOptions) {
    super();
    if (options.bindings.length === 0) throw new TetherError("config", "at least one binding is needed");
    if (!options.url && !options.dispatch) throw new TetherError("config", "a url or a dispatch URL is needed");
    this.WS = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.fetchImpl = options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    this.fallback = new Fallback({
      transports: this.usableTransports(),
      fallbackAfter: Math.max(1, options.fallbackAfter ?? DEFAULT_FALLBACK_AFTER),
      retryFirstMs: options.retryFirstTransportMs ?? DEFAULT_RETRY_FIRST_TRANSPORT_MS,
    });
    this.store = options.store ?? new MemoryStore();
    this.backoff = new Backoff(options.reconnect ?? {});
    this.tokens = new Tokens(options.bindings);
    if (options.dispatch) {
      const fetchImpl = this.fetchImpl;
      if (!fetchImpl) throw new TetherError("config", "no fetch implementation for the dispatcher: pass one as options.fetch");
      const first = options.bindings[0]!;
      this.dispatcher = new Dispatcher(options.dispatch, first.app, first.token, options.zone, fetchImpl, this.connectTimeoutMs);
    }
  }

  /**
   * Connects: resolves after the first handshake, or rejects with its {@link TetherError}
   * (there is no retry before a first success). Afterwards the client reconnects by itself.
   *
   * Add listeners before: pushes of a backlog arrive right behind `connected`, and are
   * emitted before this promise's callbacks run.
   */
  async connect(): Promise<void> {
    if (this.stateValue !== "idle") throw new TetherError("config", "connect() was called already");
    this.setState("connecting");
    await this.start();
  }

  /** Where the client stands. */
  get state(): ConnectionState {
    return this.stateValue;
  }

  /** The endpoint of the connection up, or last up. */
  get url(): string | undefined {
    return this.currentUrl;
  }

  /** The transport of the connection up, or last up: `websocket` or `sse`. */
  get transport(): TransportName | undefined {
    return this.transportValue;
  }

  /** The device id sent in `connect`. */
  get deviceId(): string {
    return this.device;
  }

  /**
   * Acks durable pushes of `app` up to `seq` (cumulative: one ack covers every seq below).
   * Sent at once when connected, else at the next connection; kept in the store as the
   * point to resume from after a restart. Seq 0 (qos 0) is ignored.
   */
  ack(app: string, seq: number): void {
    this.checkBound(app);
    if (!(seq > 0)) return;
    if ((this.acked.get(app) ?? 0) < seq) {
      this.acked.set(app, seq);
      const user = this.users.get(app);
      if (user !== undefined) void Promise.resolve(this.store.set(seqKey(app, user), String(seq))).catch(() => {});
    }
    this.pendingAcks.set(app, Math.max(seq, this.pendingAcks.get(app) ?? 0));
    if (!this.ackScheduled) {
      // Acks of one burst of pushes coalesce into one frame per app.
      this.ackScheduled = true;
      queueMicrotask(() => {
        this.ackScheduled = false;
        this.flushAcks();
      });
    }
  }

  /**
   * Subscribes to a topic of a bound app, kept across reconnects (resubscribed with `since`
   * = the last offset handed over). `since` recovers what the topic's history holds after that
   * offset; `token` is a subscription token for topics whose rule asks for one.
   */
  subscribe(app: string, topic: string, options: { since?: number; token?: string } = {}): void {
    this.checkBound(app);
    const problem = topicProblem(topic);
    if (problem) throw new TetherError("config", `invalid topic ${JSON.stringify(topic)}: ${problem}`);
    const req = this.topics.subscribe(app, topic, options.since, options.token);
    if (this.conn?.open) this.sendSubscribe(req);
  }

  /** Leaves a topic; the `unsubscribed` event follows when the server answers. */
  unsubscribe(app: string, topic: string): void {
    this.checkBound(app);
    const known = this.topics.unsubscribe(app, topic);
    if (!known || !this.conn?.open) return;
    const id = this.nextId();
    this.topics.sentUnsubscribe(id, app, topic);
    this.conn.send("unsubscribe", id, { app, topic });
  }

  /**
   * Sends data to the app's webhook and resolves to its answer. `data` is any JSON value, or
   * bytes (a `Uint8Array`). Rejects with a `request` error (43xx: 4301 busy, 4302 too many in
   * flight, 4303 no webhook, 4304 unreachable), `request_timeout`, `connection_lost` (the
   * webhook may have received it: the client never resends) or `closed`. A call made while
   * disconnected is sent after the reconnect.
   */
  upstream(app: string, kind: string, data: unknown, options: { timeoutMs?: number } = {}): Promise<UpstreamReply> {
    this.checkBound(app);
    const bytes = new TextEncoder().encode(kind).length;
    // eslint-disable-next-line no-control-regex
    if (bytes === 0 || bytes > 128 || /[\u0000-\u001f\u007f-\u009f]/.test(kind)) {
      throw new TetherError("config", `invalid upstream kind ${JSON.stringify(kind)}: 1 to 128 bytes, no control characters`);
    }
    if (this.closed) return Promise.reject(new TetherError("closed", "the client is closed"));
    const timeoutMs = options.timeoutMs ?? this.options.upstreamTimeoutMs ?? DEFAULT_UPSTREAM_TIMEOUT_MS;
    return this.request<UpstreamReply>("upstream", { app, kind, ...payloadFields(toPayload(data)) }, timeoutMs, () =>
      new TetherError("request_timeout", `no answer to upstream "${kind}" within ${timeoutMs} ms (the webhook may have received it)`),
    );
  }

  /**
   * Pulls the durable messages of `app` held after seq `after` (at most `limit`; 0: the
   * server's page). They arrive as `message` events (except those handed over before), then
   * the promise resolves with `last` (the last seq sent) and `head` (the inbox's last seq):
   * when `last < head`, sync again after `last`.
   */
  sync(app: string, after: number, limit = 0): Promise<{ last: number; head: number }> {
    this.checkBound(app);
    if (this.closed) return Promise.reject(new TetherError("closed", "the client is closed"));
    return this.request("sync", { app, after, limit }, DEFAULT_SYNC_TIMEOUT_MS, () =>
      new TetherError("request_timeout", `no answer to sync within ${DEFAULT_SYNC_TIMEOUT_MS} ms`),
    );
  }

  /**
   * Hands a new token for `app` to the server (without `getToken`, after `tokenExpiring`).
   * Resolves with the binding's new expiry; rejects with a `request` error 4306 when refused
   * (the old token holds until it expires). Reconnects use the new token.
   */
  refresh(app: string, token: string): Promise<{ expiresS: number }> {
    this.checkBound(app);
    if (this.closed) return Promise.reject(new TetherError("closed", "the client is closed"));
    return this.sendRefresh(app, token);
  }

  /** Closes the connection and stops reconnecting; pending acks are written first when connected. */
  close(): void {
    if (this.closed) return;
    this.flushAcks();
    clearTimeout(this.reconnectTimer);
    for (const timer of this.subscribeRetries) clearTimeout(timer);
    this.subscribeRetries.clear();
    this.conn?.close();
    this.conn = undefined;
    this.tokens.stop();
    this.requests.rejectAll(new TetherError("closed", "the client was closed before the answer"));
    this.setState("closed");
  }

  // ---- lifecycle ----

  private get connectTimeoutMs(): number {
    return this.options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  }

  /** `transports` without those that cannot work here; a `config` error when none is left. */
  private usableTransports(): TransportName[] {
    const asked = this.options.transports ?? ["websocket", "sse"];
    const usable: TransportName[] = [];
    for (const t of asked) {
      if (t !== "websocket" && t !== "sse") throw new TetherError("config", `unknown transport ${JSON.stringify(t)}: "websocket" or "sse"`);
      if (usable.includes(t)) continue;
      if (t === "websocket" && !this.WS) continue;
      if (t === "sse" && !this.fetchImpl) continue;
      usable.push(t);
    }
    if (usable.length > 0) return usable;
    if (asked.includes("websocket") && !this.WS) {
      throw new TetherError("config", "no WebSocket implementation: pass one as options.WebSocket (on Node 20, the `ws` package)");
    }
    throw new TetherError("config", `no usable transport among ${JSON.stringify(asked)}: SSE needs fetch (options.fetch)`);
  }

  private async start(): Promise<void> {
    this.device = this.options.device ?? (await this.loadDevice());
    for (const b of this.options.bindings) {
      const user = tokenSubject(b.token);
      if (user === undefined) continue;
      this.users.set(b.app, user);
      const stored = Number((await this.store.get(seqKey(b.app, user))) ?? NaN);
      if (Number.isSafeInteger(stored) && stored > 0) {
        this.handed.set(b.app, stored);
        this.acked.set(b.app, stored);
      }
    }
    let established;
    try {
      established = await this.establish();
    } catch (e) {
      let err = asError(e);
      if (err.code === Codes.TOKEN_EXPIRED && this.options.getToken) {
        // A token that expired before the first connect: one more try with new ones.
        await this.renewTokens().catch(() => {
          throw noReconnect(err);
        });
        try {
          established = await this.establish();
        } catch (e2) {
          err = asError(e2);
        }
      }
      if (!established) {
        this.setState("closed");
        throw noReconnect(err);
      }
    }
    if (this.closed) {
      established.link.close();
      throw new TetherError("closed", "the client was closed while connecting");
    }
    this.firstRound = false;
    this.up(established.link, established.connected);
  }

  private async loadDevice(): Promise<string> {
    const stored = await this.store.get(DEVICE_KEY);
    if (stored) return stored;
    const fresh = `js-${randomId()}`;
    await this.store.set(DEVICE_KEY, fresh);
    return fresh;
  }

  /**
   * One round: the endpoints to try (from the dispatcher, or the URL), in order, until one
   * accepts, each over the transport the fallback policy names (and, when it says so, at once
   * over the other).
   */
  private async establish(): Promise<Opened> {
    let candidates: Endpoint[];
    const own: Endpoint | undefined = this.options.url ? { ws: this.options.url, sse: this.options.sseUrl } : undefined;
    if (this.dispatcher) {
      const first = this.options.bindings[0]!;
      this.dispatcher.setToken(this.tokens.token(first.app));
      try {
        const answer = await this.dispatcher.ask();
        if (answer.backoff) this.backoff.adopt(answer.backoff.initialMs, answer.backoff.maxMs, answer.backoff.jitter);
        candidates = answer.endpoints;
      } catch (e) {
        const err = asError(e);
        if (!err.willReconnect || err.dispatchCode === "no_endpoints") throw err;
        // The dispatcher is down, not necessarily the gateways: try what it said last.
        // `url` is often one of them: trying it twice would double the round (two connect
        // timeouts against a node that hangs).
        candidates = this.dispatcher.fallback();
        if (own && !candidates.some((c) => c.ws === own.ws)) candidates.push(own);
        if (candidates.length === 0) throw err;
      }
    } else {
      candidates = [own!];
    }
    let last: TetherError | undefined;
    for (const endpoint of candidates) {
      let transport: TransportName | undefined = this.fallback.next();
      while (transport !== undefined) {
        if (this.closed) throw new TetherError("closed", "the client was closed");
        try {
          const opened = await this.open(endpoint, transport);
          this.fallback.connected(transport);
          this.dispatcher?.connected();
          this.currentUrl = opened.link.url;
          this.currentEndpoint = endpoint.ws;
          return opened;
        } catch (e) {
          const err = asError(e);
          const blocked = isBlocked(err);
          const again = this.fallback.failed(transport, err, blocked, this.firstRound);
          if (again === undefined && !err.willReconnect) throw err;
          last = err;
          transport = again;
        }
      }
      this.dispatcher?.failed(endpoint.ws);
    }
    throw last ?? new TetherError("dispatch", "the dispatcher offered no WebSocket endpoint", undefined, true);
  }

  /** Opens a session at `endpoint` over `transport`. */
  private open(endpoint: Endpoint, transport: TransportName): Promise<Opened> {
    if (transport === "websocket") {
      return WebSocketLink.open(endpoint.ws, this.WS!, this.connectRequest(), this.connectTimeoutMs, () => this.nextId());
    }
    let streamUrl: string;
    try {
      streamUrl = endpoint.sse ?? sseUrlOf(endpoint.ws);
    } catch {
      return Promise.reject(new TetherError("config", `no SSE stream URL can be derived from ${endpoint.ws}`));
    }
    return SseLink.open(streamUrl, this.fetchImpl!, this.connectRequest(), this.connectTimeoutMs);
  }

  private connectRequest(): ConnectRequest {
    return {
      id: this.nextId(),
      device: this.device,
      heartbeatMs: this.options.heartbeatMs ?? 0,
      bindings: this.options.bindings.map((b) => {
        const lastSeq = this.handed.get(b.app);
        const token = this.tokens.token(b.app);
        return lastSeq === undefined ? { app: b.app, token } : { app: b.app, token, last_seq: lastSeq };
      }),
    };
  }

  /** A connection is up: send what waited for it, and serve it. */
  private up(conn: Link, connected: Connected): void {
    if (this.closed) {
      conn.close();
      return;
    }
    this.conn = conn;
    this.startedAt = Date.now();
    this.sentRequests = new Set();
    for (const b of connected.bindings) this.users.set(b.app, b.user);
    const previous = this.transportValue;
    this.transportValue = conn.transport;
    if (previous !== conn.transport) {
      this.emit("transport", { transport: conn.transport, previous });
      if (this.conn !== conn) return; // A listener closed the client.
    }
    this.setState("connected");
    this.emit("connected", { ...connected, url: conn.url, transport: conn.transport });
    if (this.conn !== conn) return; // A listener closed the client.
    this.tokens.connectionStarted();
    this.flushAcks();
    for (const req of this.topics.connectionStarted()) this.sendSubscribe(req);
    const outbox = this.outbox;
    this.outbox = [];
    for (const item of outbox) {
      if (this.requests.has(item.id)) this.sendRequest(item.id, item.op, item.fields);
    }
    // Frames that came with `connected` are handled after it, and after what was waiting
    // to be sent (their answers cannot have come yet).
    conn.attach(
      (frame) => this.handle(frame),
      (end) => this.lost(end),
    );
  }

  private lost(end: End): void {
    const conn = this.conn;
    this.conn = undefined;
    const lostErr = new TetherError("connection_lost", `the connection ended before the answer: ${end.reason}`);
    for (const id of this.sentRequests) this.requests.reject(id, lostErr);
    this.sentRequests = new Set();
    if (Date.now() - this.startedAt >= this.backoff.max) this.backoff.reset();
    if (end.code !== undefined && codeGroup(end.code) === "redispatch" && conn && this.currentEndpoint) this.dispatcher?.failed(this.currentEndpoint);
    const renew = end.code === Codes.TOKEN_EXPIRED && this.tokens.canRenew(this.options.getToken !== undefined);
    const reconnecting = (this.options.reconnect?.enabled ?? true) && (renew || end.code === undefined || shouldReconnect(end.code));
    const error = new TetherError(end.code === undefined ? "transport" : "rejected", `connection lost: ${end.reason || "no reason given"}`, end.code, reconnecting, end.retryAfterMs);
    this.disconnected({ code: end.code, reason: end.reason, reconnecting, error });
    if (reconnecting && !this.closed) this.scheduleReconnect(end.retryAfterMs, renew);
  }

  /**
   * Tells the application that a connection ended or an attempt failed. The state says what
   * follows before listeners hear of it: `reconnecting`, or `closed` (with waiting requests
   * rejected) when this is the end.
   */
  private disconnected(event: ClientEvents["disconnected"]): void {
    if (event.reconnecting) this.setState("reconnecting");
    else this.close();
    this.emit("disconnected", event);
  }

  private scheduleReconnect(retryAfterMs: number, renew: boolean): void {
    const delay = this.backoff.next(retryAfterMs);
    this.reconnectTimer = setTimeout(() => void this.reconnect(renew), delay);
  }

  private async reconnect(renew: boolean): Promise<void> {
    if (this.closed) return;
    if (renew) {
      try {
        await this.renewTokens();
      } catch (e) {
        const reason = `no new token: ${e instanceof Error ? e.message : String(e)}`;
        const error = new TetherError("rejected", reason, Codes.TOKEN_EXPIRED, false);
        if (this.closed) return;
        this.disconnected({ code: Codes.TOKEN_EXPIRED, reason, reconnecting: false, error });
        return;
      }
    }
    try {
      const { link, connected } = await this.establish();
      this.up(link, connected);
    } catch (e) {
      if (this.closed) return;
      const err = asError(e);
      // A token that expired meanwhile: new ones, unless those were new already.
      const again = !renew && err.code === Codes.TOKEN_EXPIRED && this.tokens.canRenew(this.options.getToken !== undefined);
      const reconnecting = again || err.willReconnect;
      const error = new TetherError(err.kind, `reconnect failed: ${err.detail}`, err.code, reconnecting, err.retryAfterMs, err.status, err.dispatchCode);
      this.disconnected({ code: err.code, reason: error.detail, reconnecting, error });
      if (reconnecting && !this.closed) this.scheduleReconnect(err.retryAfterMs, again);
    }
  }

  /** Asks `getToken` for a new token for every binding. */
  private async renewTokens(): Promise<void> {
    const getToken = this.options.getToken;
    if (!getToken) throw new Error("no getToken");
    for (const b of this.options.bindings) this.tokens.set(b.app, await getToken(b.app));
  }

  // ---- frames ----

  private handle(frame: ServerFrame): void {
    switch (frame.op) {
      case "push":
        return this.push(frame.body);
      case "publication":
        if (this.topics.publication(frame.body)) this.emit("publication", frame.body);
        return;
      case "subscribed": {
        const { event, resend } = this.topics.subscribed(frame.id, frame.app, frame.topic, frame.offset, frame.recovery);
        if (resend) this.sendSubscribe(resend);
        if (event?.type === "subscribed") this.emit("subscribed", event);
        return;
      }
      case "unsubscribed": {
        const event = this.topics.unsubscribed(frame.id, frame.app, frame.topic);
        if (event?.type === "unsubscribed") this.emit("unsubscribed", event);
        return;
      }
      case "upstream_reply":
        this.sentRequests.delete(frame.id);
        this.requests.resolve(frame.id, { app: frame.app, status: frame.status, payload: frame.payload });
        return;
      case "synced":
        this.sentRequests.delete(frame.id);
        this.requests.resolve(frame.id, { last: frame.last, head: frame.head });
        return;
      case "refreshed": {
        const app = this.tokens.refreshed(frame.id, frame.app);
        this.sentRequests.delete(frame.id);
        this.requests.resolve(frame.id, { expiresS: frame.expiresS });
        if (app !== undefined) this.emit("tokenRefreshed", { app, expiresS: frame.expiresS });
        return;
      }
      case "expiring":
        return this.expiring(frame.app, frame.expiresS);
      case "error":
        return this.requestError(frame.id, frame.code, frame.message);
      default:
        return;
    }
  }

  private push(push: Push): void {
    if (push.qos > 0 && push.seq > 0) {
      const last = this.handed.get(push.app);
      // A resend around a reconnect, handed over before.
      if (last !== undefined && push.seq <= last) return;
      this.handed.set(push.app, push.seq);
    }
    this.emit("message", push);
  }

  private requestError(id: number, code: number, message: string): void {
    const err = new TetherError("request", message || "request refused", code);
    const topic = this.topics.failed(id, code, message);
    if (topic) {
      if (topic.event?.type === "subscribeFailed") this.emit("subscribeFailed", topic.event);
      if (topic.retry) this.retrySubscribe(topic.retry);
      return;
    }
    const refresh = this.tokens.refused(id);
    if (refresh) {
      this.sentRequests.delete(id);
      this.requests.reject(id, err);
      const retrying = refresh.retryInMs !== undefined && this.options.getToken !== undefined;
      this.emit("refreshFailed", { app: refresh.app, code, message, retrying });
      if (retrying) this.tokens.retryLater(refresh.app, refresh.retryInMs!, () => this.fetchAndRefresh(refresh.app));
      return;
    }
    this.sentRequests.delete(id);
    if (!this.requests.reject(id, err)) this.emit("error", err);
  }

  private expiring(app: string, expiresS: number): void {
    if (!this.options.getToken) {
      this.emit("tokenExpiring", { app, expiresS });
      return;
    }
    this.tokens.expiring(app, expiresS);
    this.fetchAndRefresh(app);
  }

  /** Asks `getToken` for `app`'s new token, then sends it in a `refresh`. */
  private fetchAndRefresh(app: string): void {
    const getToken = this.options.getToken;
    if (!getToken || !this.tokens.startFetch(app)) return;
    getToken(app).then(
      (token) => {
        this.tokens.endFetch(app);
        if (this.closed) return;
        this.sendRefresh(app, token).catch(() => {
          // Reported as `refreshFailed` by requestError, or lost with the connection.
        });
      },
      (e: unknown) => {
        this.tokens.endFetch(app);
        if (this.closed) return;
        const retryInMs = this.tokens.retryDelay(app);
        const retrying = retryInMs !== undefined;
        this.emit("refreshFailed", { app, code: undefined, message: `getToken failed: ${e instanceof Error ? e.message : String(e)}`, retrying });
        if (retrying) this.tokens.retryLater(app, retryInMs, () => this.fetchAndRefresh(app));
      },
    );
  }

  // ---- sending ----

  private sendRefresh(app: string, token: string): Promise<{ expiresS: number }> {
    return this.request<{ expiresS: number }>("refresh", { app, token }, 0, () => new TetherError("closed", "unreachable"), (id) =>
      this.tokens.sentRefresh(id, app, token),
    );
  }

  /** Sends request `op` now, or at the next connection; a promise for its answer. */
  private request<T>(op: string, fields: Record<string, unknown>, timeoutMs: number, onTimeout: () => TetherError, onId?: (id: number) => void): Promise<T> {
    const id = this.nextId();
    onId?.(id);
    const answer = this.requests.wait<T>(id, timeoutMs, onTimeout);
    if (this.conn?.open) this.sendRequest(id, op, fields);
    else this.outbox.push({ id, op, fields });
    return answer;
  }

  private sendRequest(id: number, op: string, fields: Record<string, unknown>): void {
    this.sentRequests.add(id);
    this.conn!.send(op, id, fields);
  }

  private sendSubscribe(req: SubscribeRequest): void {
    if (!this.conn?.open) return;
    const id = this.nextId();
    this.topics.sentSubscribe(id, req);
    const fields: Record<string, unknown> = { app: req.app, topic: req.topic };
    if (req.since !== undefined) fields.since = req.since;
    if (req.token !== undefined) fields.token = req.token;
    this.conn.send("subscribe", id, fields);
  }

  private retrySubscribe(req: SubscribeRequest): void {
    const delay = this.backoff.ceiling() * (0.5 + Math.random() / 2);
    const timer = setTimeout(() => {
      this.subscribeRetries.delete(timer);
      const again = this.topics.retry(req);
      if (again) this.sendSubscribe(again);
    }, delay);
    this.subscribeRetries.add(timer);
  }

  private flushAcks(): void {
    if (!this.conn?.open) return;
    for (const [app, seq] of this.pendingAcks) this.conn.send("ack", this.nextId(), { app, seq });
    this.pendingAcks.clear();
  }

  // ---- helpers ----

  /** Not narrowed by the compiler: listeners may close the client at any call. */
  private get closed(): boolean {
    return this.stateValue === "closed";
  }

  private nextId(): number {
    this.lastId = this.lastId >= 0xffff_ffff ? 1 : this.lastId + 1;
    return this.lastId;
  }

  private checkBound(app: string): void {
    if (!this.options.bindings.some((b) => b.app === app)) {
      throw new TetherError("config", `app ${JSON.stringify(app)} is not bound on this client`);
    }
  }

  private setState(state: ConnectionState): void {
    if (this.stateValue === state) return;
    this.stateValue = state;
    this.emit("state", { state });
  }
}

function asError(e: unknown): TetherError {
  return e instanceof TetherError ? e : new TetherError("transport", e instanceof Error ? e.message : String(e), undefined, true);
}

/** The same error, saying the client does not reconnect (a failed first connect). */
function noReconnect(e: TetherError): TetherError {
  return new TetherError(e.kind, e.detail, e.code, false, e.retryAfterMs, e.status, e.dispatchCode);
}

function randomId(): string {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
