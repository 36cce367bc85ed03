/**
 * The seam between the client's session logic and a transport. The client (bindings, acks,
 * resume positions, topics, requests, tokens, events) is written once; a transport only opens a
 * session (`connect` answered by `connected`), carries frames both ways, keeps itself alive
 * the way its wire wants, and tells how it ended. Two exist: WebSocket (`websocket.ts`) and
 * Server-Sent Events with a POST route (`sse.ts`, docs/protocol.md section 14).
 */

import type { Connected, ServerFrame } from "./frames.js";

/** The transports the client can use. */
export type TransportName = "websocket" | "sse";

/** Why a link ended. `code` is the server's code, when it gave one. */
export interface End {
  code: number | undefined;
  reason: string;
  retryAfterMs: number;
}

/** The `connect` the client makes: the same on every transport. */
export interface ConnectRequest {
  id: number;
  device: string;
  heartbeatMs: number;
  bindings: { app: string; token: string; last_seq?: number }[];
}

/**
 * One open session over one transport. It ends exactly once, with an {@link End}, unless the
 * client closes it ({@link Link.close}).
 */
export interface Link {
  readonly transport: TransportName;
  /** The endpoint, without credentials: the WebSocket URL, or the SSE stream's URL without its query. */
  readonly url: string;
  /** Whether frames can still be sent. */
  readonly open: boolean;
  /**
   * Names where frames and the end go, and hands over those that came before: frames that
   * arrive with `connected` (a backlog) wait until the client has taken the connection.
   */
  attach(frame: (frame: ServerFrame) => void, end: (end: End) => void): void;
  /** Sends one frame; a link that is ending drops it (the end is on its way). */
  send(op: string, id: number, fields: Record<string, unknown>): void;
  /** Closes on purpose (frames already given to `send` go first where the wire allows): no {@link End} is reported. */
  close(): void;
}

/** A session that completed its handshake. */
export interface Opened {
  link: Link;
  connected: Connected;
}

/**
 * Frames that arrive before {@link Link.attach}, then handed over in order: the part of the
 * attach contract both transports share.
 */
export class Handoff {
  private handlers: { frame(frame: ServerFrame): void; end(end: End): void } | undefined;
  private early: ({ frame: ServerFrame } | { end: End })[] = [];

  attach(frame: (frame: ServerFrame) => void, end: (end: End) => void): void {
    this.handlers = { frame, end };
    const early = this.early;
    this.early = [];
    for (const item of early) {
      if ("frame" in item) frame(item.frame);
      else end(item.end);
    }
  }

  frame(frame: ServerFrame): void {
    if (this.handlers) this.handlers.frame(frame);
    else this.early.push({ frame });
  }

  end(end: End): void {
    if (this.handlers) this.handlers.end(end);
    else this.early.push({ end });
  }
}
