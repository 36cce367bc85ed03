/**
 * Reconnect delays: exponential with jitter, floored by the server's `retry_after_ms`
 * (docs/protocol.md, sections 8 and 11).
 *
 * Full jitter (a uniform draw in `[0, ceiling)`) spreads a crowd of clients that lost their
 * node at the same instant over the whole window instead of bunching them at its end. A
 * dispatcher may ask for less jitter ({@link Backoff.adopt}).
 */

/** Reconnect delays: before round `n` (from 0), a ceiling of `min(maxMs, initialMs * 2^n)`. */
export interface ReconnectPolicy {
  /** Whether the client reconnects at all after a lost connection (default true). */
  enabled?: boolean;
  /** The first ceiling (default 500 ms). */
  initialMs?: number;
  /** The largest ceiling (default 30 s). */
  maxMs?: number;
}

export class Backoff {
  private initialMs: number;
  private maxMs: number;
  /** The random part of a delay, from 0 (always the ceiling) to 1 (full jitter). */
  private jitter = 1;
  /** Attempts since the last reset. */
  private attempt = 0;

  constructor(
    policy: ReconnectPolicy,
    private readonly random: () => number = Math.random,
  ) {
    this.initialMs = Math.max(1, policy.initialMs ?? 500);
    this.maxMs = Math.max(this.initialMs, policy.maxMs ?? 30_000);
  }

  /**
   * Switches to a dispatcher's parameters, keeping the attempt count. Out-of-range values are
   * clamped, so that a broken answer cannot make the client spin.
   */
  adopt(initialMs: number, maxMs: number, jitter: number): void {
    this.initialMs = Number.isFinite(initialMs) ? Math.max(1, initialMs) : this.initialMs;
    this.maxMs = Number.isFinite(maxMs) ? Math.max(this.initialMs, maxMs) : this.maxMs;
    this.jitter = Number.isFinite(jitter) ? Math.min(1, Math.max(0, jitter)) : 1;
  }

  /** The largest ceiling. */
  get max(): number {
    return this.maxMs;
  }

  /** Back to the first, shortest ceiling (after a connection that stayed up). */
  reset(): void {
    this.attempt = 0;
  }

  /** The ceiling of the next delay. */
  ceiling(): number {
    return Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 52));
  }

  /**
   * The delay before the next attempt: uniform in `[(1 - jitter) * ceiling, ceiling)`, but at
   * least `retryAfterMs` (the server's word wins, even above the maximum). Advances the count.
   */
  next(retryAfterMs = 0): number {
    const delay = this.ceiling() * (1 - this.jitter * this.random());
    this.attempt += 1;
    return Math.max(delay, retryAfterMs);
  }
}
