/**
 * The WebSocket transport: one connection to a gateway, the handshake (`connect` answered by
 * `connected`), heartbeats (docs/protocol.md, section 6), and how it ended. No reconnect logic
 * here.
 *
 * A connection ends exactly once, with an {@link End}: the server's `disconnect` (its code,
 * reason and `retry_after_ms`), a WebSocket close (its code), a frame that does not decode, or
 * silence: nothing received within two heartbeat intervals of a ping.
 */

import { serverCode, shouldReconnect, TetherError } from "./errors.js";
import { decode, DecodeError, encode, type ServerFrame } from "./frames.js";
import { Handoff, type ConnectRequest, type End, type Link, type Opened } from "./transport.js";

/** The parts of the WHATWG WebSocket the client uses (browsers, Node 22, the `ws` package). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** The shortest heartbeat interval accepted from a server (a guard against a ping flood). */
const MIN_HEARTBEAT_MS = 10;

/** The interval used when neither side named one (the server's default, section 6). */
const DEFAULT_HEARTBEAT_MS = 25_000;

const OPEN = 1;

/** Errors of a WebSocket that could not even be constructed. */
const blocked = new WeakSet<TetherError>();

/** Whether `err` says that WebSockets cannot be opened at all here (the constructor threw). */
export function isBlocked(err: TetherError): boolean {
  return blocked.has(err);
}

export class WebSocketLink implements Link {
  readonly transport = "websocket";
  /**
   * Frames that arrive in the same read as `connected` (a backlog) are emitted by the socket
   * before the promise of {@link WebSocketLink.open} is seen to resolve: they wait here.
   */
  private readonly handoff = new Handoff();

  private ended = false;
  private lastSent = Date.now();
  /** When the oldest ping sent since the last frame received went out. */
  private unansweredPing: number | undefined;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatMs = 0;
  /** The reason an `error` frame gave for the close that follows it. */
  private closeReason: { code: number; message: string } | undefined;

  private constructor(
    readonly url: string,
    private readonly ws: WebSocketLike,
    private readonly nextId: () => number,
  ) {}

  /**
   * Opens `url`, sends `connect` and waits for `connected`, all within `timeoutMs`. Rejects
   * with a {@link TetherError}: `rejected` with the server's code, `transport`, `timeout` or
   * `protocol`.
   */
  static open(
    url: string,
    WS: WebSocketConstructor,
    connect: ConnectRequest,
    timeoutMs: number,
    nextId: () => number,
  ): Promise<Opened> {
    return new Promise((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new WS(url);
      } catch (e) {
        // A bad URL, or a page not allowed to open one (mixed content): a WebSocket cannot be
        // used at all, which SSE may still be.
        const err = new TetherError("config", `cannot open ${url}: ${e instanceof Error ? e.message : String(e)}`);
        blocked.add(err);
        reject(err);
        return;
      }
      const conn = new WebSocketLink(url, ws, nextId);
      let settled = false;
      let refusal: { code: number; reason: string; retryAfterMs: number } | undefined;
      const fail = (err: TetherError) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        conn.detach();
        try {
          ws.close();
        } catch {
          // Already closed or never opened.
        }
        reject(err);
      };
      const timer = setTimeout(
        () => fail(new TetherError("timeout", `connect to ${url} timed out after ${timeoutMs} ms`, undefined, true)),
        timeoutMs,
      );
      ws.onopen = () => {
        const bindings = connect.bindings;
        ws.send(encode("connect", connect.id, { version: 1, device: connect.device, heartbeat_ms: connect.heartbeatMs, bindings }));
      };
      ws.onerror = () => {
        // The close event follows, with the code; nothing to decide here.
      };
      ws.onclose = (ev) => {
        const code = serverCode(ev.code);
        const r = refusal ?? (code !== undefined ? { code, reason: ev.reason, retryAfterMs: 0 } : undefined);
        if (r) {
          fail(refused(r.code, r.reason, r.retryAfterMs));
        } else {
          fail(new TetherError("transport", `${url} closed during the handshake (WebSocket code ${ev.code})`, undefined, true));
        }
      };
      ws.onmessage = (ev) => {
        if (settled) return;
        let frame: ServerFrame;
        try {
          frame = decode(textOf(ev.data));
        } catch (e) {
          fail(new TetherError("protocol", `during the handshake: ${e instanceof Error ? e.message : String(e)}`, undefined, true));
          return;
        }
        switch (frame.op) {
          case "connected":
            settled = true;
            clearTimeout(timer);
            conn.start(frame.body.heartbeatMs || connect.heartbeatMs || DEFAULT_HEARTBEAT_MS);
            resolve({ link: conn, connected: frame.body });
            return;
          case "disconnect":
            refusal = { code: frame.code, reason: frame.reason, retryAfterMs: frame.retryAfterMs };
            fail(refused(frame.code, frame.reason, frame.retryAfterMs));
            return;
          case "error":
            refusal = { code: frame.code, reason: frame.message, retryAfterMs: 0 };
            return;
          case "ping":
          case "pong":
            return;
          default:
            fail(new TetherError("protocol", `expected "connected" from the server, got "${frame.op}"`, undefined, true));
        }
      };
    });
  }

  attach(frame: (frame: ServerFrame) => void, end: (end: End) => void): void {
    this.handoff.attach(frame, end);
  }

  /** Sends one frame; a socket no longer open drops it (the end is on its way). */
  send(op: string, id: number, fields: Record<string, unknown>): void {
    if (this.ended || this.ws.readyState !== OPEN) return;
    this.ws.send(encode(op, id, fields));
    this.lastSent = Date.now();
  }

  /** Whether frames can still be sent. */
  get open(): boolean {
    return !this.ended && this.ws.readyState === OPEN;
  }

  /** Closes on purpose: no {@link End} is reported. */
  close(): void {
    this.ended = true;
    this.detach();
    try {
      this.ws.close(1000, "client closing");
    } catch {
      // Already closed.
    }
  }

  private start(heartbeatMs: number): void {
    this.heartbeatMs = Math.max(MIN_HEARTBEAT_MS, heartbeatMs);
    this.lastSent = Date.now();
    this.ws.onmessage = (ev) => this.receive(ev.data);
    this.ws.onclose = (ev) => {
      const reason = this.closeReason;
      this.end(
        reason
          ? { code: reason.code, reason: reason.message, retryAfterMs: 0 }
          : { code: serverCode(ev.code), reason: ev.reason || `WebSocket closed with code ${ev.code}`, retryAfterMs: 0 },
      );
    };
    this.schedule();
  }

  private receive(data: unknown): void {
    if (this.ended) return;
    this.unansweredPing = undefined;
    let frame: ServerFrame;
    try {
      frame = decode(textOf(data));
    } catch (e) {
      const why = e instanceof DecodeError ? e.message : String(e);
      this.fail(`undecodable frame from the server: ${why}`);
      return;
    }
    switch (frame.op) {
      case "disconnect":
        this.end({ code: frame.code, reason: frame.reason, retryAfterMs: frame.retryAfterMs });
        return;
      case "pong":
        return;
      case "ping":
        this.send("pong", frame.id, {});
        return;
      case "error":
        // 43xx answer requests; others announce the close that follows.
        if (frame.code < 4300 || frame.code >= 4400) {
          this.closeReason = { code: frame.code, message: frame.message };
          return;
        }
        break;
      case "connected":
        this.fail(`protocol violation by the server: a second "connected"`);
        return;
    }
    this.handoff.frame(frame);
  }

  /** Sends a ping when nothing was sent for an interval; ends the connection after a silence. */
  private schedule(): void {
    clearTimeout(this.timer);
    if (this.ended) return;
    const now = Date.now();
    const silenceLimit = 2 * this.heartbeatMs;
    if (this.unansweredPing !== undefined && now - this.unansweredPing >= silenceLimit) {
      this.fail(`no frame from the server within ${silenceLimit} ms of a ping`);
      return;
    }
    if (now - this.lastSent >= this.heartbeatMs) {
      this.send("ping", this.nextId(), {});
      this.unansweredPing ??= Date.now();
    }
    let next = this.lastSent + this.heartbeatMs;
    if (this.unansweredPing !== undefined) next = Math.min(next, this.unansweredPing + silenceLimit);
    this.timer = setTimeout(() => this.schedule(), Math.max(1, next - Date.now()));
  }

  /** Ends the connection from this side (a dead or misbehaving server). */
  private fail(reason: string): void {
    try {
      this.ws.close(1000, "client giving up");
    } catch {
      // Already closed.
    }
    this.end({ code: undefined, reason, retryAfterMs: 0 });
  }

  private end(end: End): void {
    if (this.ended) return;
    this.ended = true;
    this.detach();
    this.handoff.end(end);
  }

  private detach(): void {
    clearTimeout(this.timer);
    this.ws.onmessage = null;
    this.ws.onclose = null;
    this.ws.onopen = null;
    // Keep an error handler: some implementations throw on an unhandled error event.
    this.ws.onerror = () => {};
  }
}

function refused(code: number, reason: string, retryAfterMs: number): TetherError {
  return new TetherError("rejected", `the server refused the connection: ${reason || "no reason given"}`, code, shouldReconnect(code), retryAfterMs);
}

function textOf(data: unknown): string {
  if (typeof data === "string") return data;
  throw new DecodeError("a binary message from the server on a JSON connection");
}
