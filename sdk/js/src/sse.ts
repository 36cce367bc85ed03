/**
 * The Server-Sent Events transport (docs/protocol.md section 14): the server's frames arrive on
 * a `GET /v1/sse` stream, and what the client sends goes in `POST /v1/sse/<session id>`.
 *
 * # Why `fetch` and not `EventSource`
 *
 * The stream is read with `fetch` and a streaming body reader, and the event-stream format is
 * parsed here (`eventstream.ts`), for four reasons: it works the same in browsers and in Node 20
 * (which has `fetch` but no `EventSource`); it can send a single binding's token in
 * `Authorization: Bearer` rather than in the URL, where proxies log it; it reads the body of a
 * refusal (`401`/`404`/`400` with `{code, error}`), so that a bad token or an unknown app stops
 * the client with the same code as on WebSocket, where `EventSource` only sees an `error`
 * event; and it leaves reconnecting to the client, whose backoff, dispatcher and resume
 * positions are the same for both transports (`EventSource` reconnects by itself, on the URL
 * it began with).
 *
 * # Resume
 *
 * The stream's query is the client's `connect` with the positions the client holds: each
 * binding's `last_seq` (the last seq handed to the application). Topics are subscribed after
 * `connected` with `subscribe` frames carrying `since`, as on WebSocket, so that the topic table
 * and its events work the same. The events' `id:` (the positions the server wrote) is kept
 * ({@link SseLink.lastEventId}) but not needed: what the client handed over is what counts.
 *
 * # Sending
 *
 * Frames given to `send` in one turn of the event loop go in one POST (a JSON array, within the
 * server's `max_frame`); POSTs go one at a time, so the session takes frames in order. What
 * waits is bounded ({@link MAX_QUEUED_BYTES}); past that, the link ends and the client
 * reconnects. A POST answered `503` (the session's inbox is full, or its node cannot be reached)
 * is tried again a few times after its `Retry-After`; `404` (the stream ended) ends the link; a
 * `400`/`413`/`415` refuses what was posted and nothing else, answered to each request as an
 * `error` 4300; a network error ends the link (what it carried may or may not have arrived).
 *
 * # Keep-alive
 *
 * The client sends no heartbeat on a stream (section 14.1). The server writes a comment when
 * it has sent nothing for an interval: nothing at all from it for three intervals (the
 * server's own count of missed heartbeats, by default) ends the link.
 */

import { errorText, type FetchLike, type FetchResponse } from "./dispatch.js";
import { refusalCode, shouldReconnect, TetherError } from "./errors.js";
import { EventStreamParser, type StreamEvent } from "./eventstream.js";
import { decode, encode, type Connected, type ServerFrame } from "./frames.js";
import { Handoff, type ConnectRequest, type End, type Link, type Opened } from "./transport.js";

/** Bytes of frames waiting to be posted at most; past that the link ends. */
export const MAX_QUEUED_BYTES = 1 << 20;

/** How often a POST answered `503` is tried again, at most. */
const MAX_BUSY_RETRIES = 5;

/** The longest wait before trying a `503` again, whatever `Retry-After` says. */
const MAX_RETRY_AFTER_MS = 5_000;

/** The server's default `max_frame`, used until `connected` says. */
const DEFAULT_MAX_FRAME = 65_536;

/** Heartbeat intervals of silence after which the stream is taken as dead. */
const SILENT_INTERVALS = 3;

/** The interval used when the server names none (its default, section 6). */
const DEFAULT_HEARTBEAT_MS = 25_000;

/** How long `close()` waits for its last POST before dropping the stream. */
const CLOSE_GRACE_MS = 2_000;

/** The longest error body read from a refusal. */
/** The longest event the parser holds, whatever `max_frame` the server announces. */
const MAX_EVENT_LENGTH = 64 * 1024 * 1024;
const MAX_ERROR_BODY = 4096;

/**
 * The stream's URL for a WebSocket endpoint: `ws://host:port/ws` streams at
 * `http://host:port/v1/sse` (`wss` at `https`). A path prefix before `/ws` is kept, for a
 * gateway published under one by a reverse proxy. Throws for a URL that does not parse.
 */
export function sseUrlOf(wsUrl: string): string {
  const url = new URL(wsUrl);
  if (url.protocol === "ws:") url.protocol = "http:";
  else if (url.protocol === "wss:") url.protocol = "https:";
  url.pathname = url.pathname.endsWith("/ws") ? `${url.pathname.slice(0, -3)}/v1/sse` : "/v1/sse";
  url.search = "";
  url.hash = "";
  return url.toString();
}

/** The stream request of a `connect`: its URL (the query) and headers. */
export function streamRequest(streamUrl: string, connect: ConnectRequest): { url: string; headers: Record<string, string> } {
  const query = new URLSearchParams();
  query.set("version", "1");
  query.set("device", connect.device);
  if (connect.heartbeatMs > 0) query.set("heartbeat_ms", String(connect.heartbeatMs));
  const headers: Record<string, string> = { accept: "text/event-stream" };
  // One binding: its token in a header, out of URLs that proxies log.
  const bearer = connect.bindings.length === 1;
  for (const b of connect.bindings) {
    query.append("app", b.app);
    if (bearer) headers.authorization = `Bearer ${b.token}`;
    else query.append("token", b.token);
    if (b.last_seq !== undefined) query.append("last_seq", String(b.last_seq));
  }
  const sep = streamUrl.includes("?") ? "&" : "?";
  return { url: `${streamUrl}${sep}${query}`, headers };
}

interface Queued {
  id: number;
  op: string;
  text: string;
  bytes: number;
}

export class SseLink implements Link {
  readonly transport = "sse";
  private readonly handoff = new Handoff();
  private readonly parser: EventStreamParser;
  private readonly encoder = new TextEncoder();

  private handshake: { resolve(c: Connected): void; reject(e: TetherError): void } | undefined;
  private session: string | undefined;
  private ended = false;
  /** After `close()`: the queue is still posted, then the stream dropped. */
  private flushing = false;
  private lastReceived = Date.now();
  private heartbeatMs = DEFAULT_HEARTBEAT_MS;
  private maxFrame = DEFAULT_MAX_FRAME;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  /** The reason an `error` frame gave for the end that follows it. */
  private closeReason: { code: number; message: string } | undefined;

  private queue: Queued[] = [];
  private queuedBytes = 0;
  private posting = false;
  /** Called once the queue is posted after `close()`. */
  private afterFlush: (() => void) | undefined;

  private constructor(
    /** The stream's URL, without the query. */
    readonly url: string,
    private readonly controller: AbortController,
    private readonly fetchImpl: FetchLike,
    private readonly timeoutMs: number,
  ) {
    this.parser = new EventStreamParser(
      (event) => this.event(event),
      () => {},
    );
  }

  /**
   * Opens the stream at `streamUrl` (no query) with the `connect` and waits for `connected`,
   * all within `timeoutMs`. Rejects with a {@link TetherError}: `rejected` with the server's
   * code (an HTTP refusal, or a `disconnect` event), `transport` (unreachable, a non-tether
   * answer), `timeout` or `protocol`.
   */
  static async open(streamUrl: string, fetchImpl: FetchLike, connect: ConnectRequest, timeoutMs: number): Promise<Opened> {
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    const { url, headers } = streamRequest(streamUrl, connect);
    try {
      let res: FetchResponse;
      try {
        res = await fetchImpl(url, { headers, signal: controller.signal });
      } catch (e) {
        throw new TetherError("transport", `cannot open the stream ${streamUrl}: ${errorText(e)}`, undefined, true);
      }
      if (res.status !== 200) throw await refusal(streamUrl, res);
      const type = res.headers?.get("content-type") ?? "text/event-stream";
      if (!/^text\/event-stream\b/i.test(type)) {
        throw new TetherError("transport", `${streamUrl} answered ${type}, not an event stream`, undefined, true, 0, res.status);
      }
      const body = res.body;
      if (!body || typeof body.getReader !== "function") {
        throw new TetherError("config", "this fetch gives no readable body stream: pass a WHATWG fetch as options.fetch");
      }
      const link = new SseLink(streamUrl, controller, fetchImpl, timeoutMs);
      const connected = await link.start(body.getReader());
      return { link, connected };
    } catch (e) {
      controller.abort();
      if (timedOut) throw new TetherError("timeout", `opening the stream ${streamUrl} timed out after ${timeoutMs} ms`, undefined, true);
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /** The last event id the stream gave: the positions the server wrote. */
  get lastEventId(): string {
    return this.parser.lastEventId;
  }

  get open(): boolean {
    return !this.ended && this.handshake === undefined && this.session !== undefined;
  }

  attach(frame: (frame: ServerFrame) => void, end: (end: End) => void): void {
    this.handoff.attach(frame, end);
  }

  send(op: string, id: number, fields: Record<string, unknown>): void {
    if (this.ended || this.session === undefined) return;
    this.enqueue(op, id, encode(op, id, fields));
  }

  close(): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.watchdog);
    if (this.session === undefined || (this.queue.length === 0 && !this.posting)) {
      this.controller.abort();
      return;
    }
    // What was sent before close() (the last acks) goes first, then a `disconnect`, which
    // ends the session; the stream is dropped after, so the session does not end before.
    this.flushing = true;
    const grace = setTimeout(() => this.controller.abort(), CLOSE_GRACE_MS);
    this.afterFlush = () => {
      clearTimeout(grace);
      this.controller.abort();
    };
    this.enqueue("disconnect", 0, encode("disconnect", 0, { code: 1000, reason: "client closing" }));
  }

  // ---- the stream ----

  /** Reads the stream until it ends; resolves with `connected`. */
  private start(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<Connected> {
    const connected = new Promise<Connected>((resolve, reject) => {
      this.handshake = { resolve, reject };
    });
    void this.pump(reader);
    return connected;
  }

  private async pump(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (this.ended && !this.handshake) return;
        if (done) {
          this.parser.feed(decoder.decode());
          const reason = this.closeReason;
          this.end(reason ? { code: reason.code, reason: reason.message, retryAfterMs: 0 } : { code: undefined, reason: "the server ended the stream", retryAfterMs: 0 });
          return;
        }
        this.lastReceived = Date.now();
        this.parser.feed(decoder.decode(value, { stream: true }));
      }
    } catch (e) {
      if (this.ended && !this.handshake) return;
      this.fail(`the stream failed: ${errorText(e)}`);
    } finally {
      try {
        reader.releaseLock();
      } catch {
        // A read still pending (the stream was aborted): nothing to release.
      }
    }
  }

  private event(event: StreamEvent): void {
    if (this.ended) return;
    if (event.type === "session") {
      const id = event.data.trim();
      if (id.length === 0 || id.length > 512) return this.fail("the stream named an unusable session id");
      this.session = id;
      return;
    }
    if (event.type !== "message") return;
    let frame: ServerFrame;
    try {
      frame = decode(event.data);
    } catch (e) {
      return this.fail(`undecodable frame from the server: ${e instanceof Error ? e.message : String(e)}`);
    }
    switch (frame.op) {
      case "disconnect":
        return this.end({ code: frame.code, reason: frame.reason, retryAfterMs: frame.retryAfterMs });
      case "ping":
      case "pong":
        return;
      case "error":
        // 43xx answer requests; others announce the end that follows.
        if (frame.code < 4300 || frame.code >= 4400) {
          this.closeReason = { code: frame.code, message: frame.message };
          return;
        }
        break;
      case "connected":
        return this.connected(frame.body);
    }
    if (this.handshake) return this.fail(`expected "connected" from the server, got "${frame.op}"`);
    this.handoff.frame(frame);
  }

  private connected(connected: Connected): void {
    const handshake = this.handshake;
    if (!handshake) return this.fail(`protocol violation by the server: a second "connected"`);
    if (this.session === undefined) return this.fail(`the stream sent "connected" before naming its session`);
    this.handshake = undefined;
    this.heartbeatMs = connected.heartbeatMs > 0 ? connected.heartbeatMs : DEFAULT_HEARTBEAT_MS;
    this.maxFrame = connected.maxFrame > 0 ? connected.maxFrame : DEFAULT_MAX_FRAME;
    // A JSON frame of the server may take twice max_frame (base64 payloads, section 7).
    // Capped: the server's figure does not lift the bound on what a hostile stream can make
    // the parser hold (max_frame is at most 16 MiB).
    this.parser.maxLength = Math.max(this.parser.maxLength, Math.min(4 * this.maxFrame, MAX_EVENT_LENGTH));
    this.lastReceived = Date.now();
    this.watch();
    handshake.resolve(connected);
  }

  /** Ends the link when nothing came for {@link SILENT_INTERVALS} heartbeat intervals. */
  private watch(): void {
    clearTimeout(this.watchdog);
    if (this.ended) return;
    const limit = SILENT_INTERVALS * this.heartbeatMs;
    const silent = Date.now() - this.lastReceived;
    if (silent >= limit) return this.fail(`nothing from the server for ${silent} ms (not even a keep-alive)`);
    this.watchdog = setTimeout(() => this.watch(), limit - silent + 1);
  }

  /** Ends the link from this side (a dead or misbehaving server, a session gone). */
  private fail(reason: string): void {
    this.end({ code: undefined, reason, retryAfterMs: 0 });
  }

  private end(end: End): void {
    if (this.ended && !this.handshake) return;
    this.ended = true;
    clearTimeout(this.watchdog);
    this.controller.abort();
    this.queue = [];
    this.queuedBytes = 0;
    const handshake = this.handshake;
    if (handshake) {
      this.handshake = undefined;
      handshake.reject(
        end.code !== undefined
          ? new TetherError("rejected", `the server refused the stream: ${end.reason || "no reason given"}`, end.code, shouldReconnect(end.code), end.retryAfterMs)
          : new TetherError("transport", `${this.url}: ${end.reason}`, undefined, true),
      );
      return;
    }
    this.handoff.end(end);
  }

  // ---- sending ----

  private enqueue(op: string, id: number, text: string): void {
    const bytes = this.encoder.encode(text).length;
    if (this.queuedBytes + bytes > MAX_QUEUED_BYTES) {
      return this.fail(`more than ${MAX_QUEUED_BYTES} bytes of frames wait to be posted`);
    }
    this.queue.push({ id, op, text, bytes });
    this.queuedBytes += bytes;
    if (this.posting) return;
    this.posting = true;
    // Frames sent in this turn of the event loop go together.
    queueMicrotask(() => void this.drain());
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0 && (!this.ended || this.flushing)) {
      const batch = this.batch();
      if (batch.length === 0) continue;
      const ok = await this.post(batch);
      if (!ok) break;
    }
    this.posting = false;
    if (this.flushing) {
      this.flushing = false;
      this.afterFlush?.();
    }
  }

  /** The next POST's frames: as many as fit in `max_frame`; one too large alone is refused here. */
  private batch(): Queued[] {
    const batch: Queued[] = [];
    let size = 2; // The array's brackets.
    while (this.queue.length > 0) {
      const next = this.queue[0]!;
      if (next.bytes + 2 > this.maxFrame) {
        this.queue.shift();
        this.queuedBytes -= next.bytes;
        this.refuse([next], `a frame of ${next.bytes} bytes is over the server's max_frame (${this.maxFrame}): not sent`);
        continue;
      }
      if (batch.length > 0 && size + next.bytes + 1 > this.maxFrame) break;
      size += next.bytes + (batch.length > 0 ? 1 : 0);
      batch.push(next);
      this.queue.shift();
      this.queuedBytes -= next.bytes;
    }
    return batch;
  }

  /** Posts `batch`; false when the link ended over it. */
  private async post(batch: Queued[]): Promise<boolean> {
    const body = batch.length === 1 ? batch[0]!.text : `[${batch.map((q) => q.text).join(",")}]`;
    const url = `${this.url}/${encodeURIComponent(this.session!)}`;
    const fetchImpl = this.fetchImpl;
    for (let attempt = 0; ; attempt++) {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), this.timeoutMs);
      let status: number;
      let text: string;
      let retryAfter: string | null | undefined;
      try {
        // text/plain: a simple request, which needs no CORS preflight.
        const res = await fetchImpl(url, { method: "POST", headers: { "content-type": "text/plain" }, body, signal: controller.signal });
        status = res.status;
        retryAfter = res.headers?.get("retry-after");
        text = await res.text();
      } catch (e) {
        if (!this.flushing) this.fail(`a POST to the session failed: ${errorText(e)}`);
        return false;
      } finally {
        clearTimeout(timer);
      }
      if (status >= 200 && status < 300) return true;
      const { code, error } = errorBody(text);
      const what = `a POST to the session answered ${status}${code ? ` ${code}` : ""}${error ? `: ${error}` : ""}`;
      if (status === 503 && attempt < MAX_BUSY_RETRIES && !(this.ended && !this.flushing)) {
        // Nothing was taken: the same frames again, after a while.
        const seconds = Number(retryAfter);
        const wait = Number.isFinite(seconds) && seconds > 0 ? Math.min(MAX_RETRY_AFTER_MS, seconds * 1000) : 1000;
        await new Promise((r) => setTimeout(r, wait * (0.5 + Math.random() / 2)));
        if (this.ended && !this.flushing) return false;
        continue;
      }
      if (status === 400 || status === 411 || status === 413 || status === 415) {
        // Nothing was handed over, and the session goes on: those requests are refused.
        this.refuse(batch, what);
        return true;
      }
      if (!this.flushing) this.fail(status === 404 ? `the stream's session is gone (${what})` : what);
      return false;
    }
  }

  /** Answers each frame of `batch` with an `error` 4300, as the session would have. */
  private refuse(batch: Queued[], message: string): void {
    if (this.flushing) return;
    for (const q of batch) {
      if (q.op === "disconnect") continue;
      this.handoff.frame({ op: "error", id: q.id, code: 4300, message });
    }
  }
}

/** The error of a stream answered with an HTTP status other than 200. */
async function refusal(streamUrl: string, res: FetchResponse): Promise<TetherError> {
  let text = "";
  try {
    text = (await res.text()).slice(0, MAX_ERROR_BODY);
  } catch {
    // The status says enough.
  }
  const { code: label, error } = errorBody(text);
  if (label === undefined) {
    // Not tether's answer: a proxy, or no SSE route there. Another try may work.
    return new TetherError("transport", `${streamUrl} answered HTTP ${res.status}`, undefined, true, 0, res.status);
  }
  const code = refusalCode(label);
  const why = error || label;
  if (code !== undefined) {
    return new TetherError("rejected", `the server refused the stream: ${why}`, code, false, 0, res.status, label);
  }
  // 403 `forbidden` (this page's origin), 400 `bad_request` (a query it cannot read), 405...
  const retry = res.status >= 500 || res.status === 429 || res.status === 408;
  return new TetherError(retry ? "transport" : "rejected", `the server refused the stream with HTTP ${res.status} ${label}: ${why}`, undefined, retry, 0, res.status, label);
}

/** The `{code, error}` of an error body, when it is one. */
function errorBody(text: string): { code: string | undefined; error: string } {
  try {
    const body = JSON.parse(text) as { code?: unknown; error?: unknown };
    return { code: typeof body.code === "string" ? body.code : undefined, error: typeof body.error === "string" ? body.error : "" };
  } catch {
    return { code: undefined, error: "" };
  }
}
