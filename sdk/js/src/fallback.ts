/**
 * Which transport to try next (no I/O): the first of `transports` (WebSocket by default) until
 * it fails `fallbackAfter` times in a row without the server's word, then the second (SSE).
 *
 * - A failure **without the server's word** is one where no tether code came back: the socket
 *   did not open (a WebSocket closed with 1006 before its handshake, a refused or reset TCP
 *   connection, a proxy that strips the upgrade), or the handshake timed out. A refusal with a
 *   code (4204, 4101...) says the transport works, and resets the count. A WebSocket that
 *   cannot even be constructed (a bad URL, mixed content) counts as blocked: the fallback at
 *   once.
 * - The first round of `connect()` has no retry (the application decides after it), so in it
 *   one such failure is enough: the same endpoint is tried over the fallback at once.
 * - When the fallback is tried and fails too, nothing sticks: the server is down rather than
 *   the transport blocked, and the next round starts with the first transport again (the
 *   count stays reached, so each round then tries both on an endpoint).
 * - Once the fallback connected, the client stays on it for reconnects. After `retryFirstMs`
 *   on it, a reconnect tries the first transport once more (bounded: one attempt per period);
 *   if that fails, the fallback is tried at once and the period starts again. A connection up
 *   over the fallback is never dropped to probe: a probe would be a second session of the
 *   same device.
 *
 * A restart of the node can, now and then, leave a client on the fallback: a round whose
 * WebSocket was refused while the node was down, and whose SSE attempt, a moment later, found
 * it back. The client then returns to WebSocket at its first reconnect after the period.
 */

import type { TetherError } from "./errors.js";
import type { TransportName } from "./transport.js";

export interface FallbackOptions {
  /** In order of preference; one or two distinct names. */
  transports: TransportName[];
  /** Failures in a row of the first transport before the second is tried. */
  fallbackAfter: number;
  /** How long the client stays on the fallback before a reconnect tries the first again. */
  retryFirstMs: number;
}

export class Fallback {
  private readonly first: TransportName;
  private readonly second: TransportName | undefined;
  private misses = 0;
  /** When the fallback connected (sticky from then), or undefined while on the first. */
  private onSecondSince: number | undefined;

  constructor(
    private readonly options: FallbackOptions,
    private readonly now: () => number = Date.now,
  ) {
    this.first = options.transports[0]!;
    this.second = options.transports[1];
  }

  /** The transport to try next. */
  next(): TransportName {
    if (this.second === undefined || this.onSecondSince === undefined) return this.first;
    return this.now() - this.onSecondSince >= this.options.retryFirstMs ? this.first : this.second;
  }

  /**
   * An attempt over `transport` failed with `err` (a `code` when the server answered;
   * `blocked`: the transport cannot be used here at all). Returns the transport to try the same
   * endpoint with at once, or undefined to go on to the next endpoint (or round).
   */
  failed(transport: TransportName, err: TetherError, blocked: boolean, firstRound: boolean): TransportName | undefined {
    const second = this.second;
    if (transport !== this.first || second === undefined) return undefined;
    if (err.code !== undefined) {
      // The server answered over it: the transport works; its code decides what follows.
      this.misses = 0;
      return undefined;
    }
    this.misses = blocked ? Math.max(this.options.fallbackAfter, this.misses + 1) : this.misses + 1;
    if (this.onSecondSince !== undefined) {
      // A probe of the first transport failed: back to the fallback for another period.
      this.onSecondSince = this.now();
      return second;
    }
    return this.misses >= this.options.fallbackAfter || firstRound ? second : undefined;
  }

  /** A session came up over `transport`. */
  connected(transport: TransportName): void {
    if (transport === this.first) {
      this.misses = 0;
      this.onSecondSince = undefined;
    } else if (this.onSecondSince === undefined) {
      this.onSecondSince = this.now();
    }
  }
}
