/**
 * Requests answered by one frame with the request's id (upstream, sync, refresh): their
 * promises, timeouts, and what happens to them when a connection ends (no I/O here).
 */

import { TetherError } from "./errors.js";

interface Waiting {
  resolve(value: unknown): void;
  reject(err: TetherError): void;
  timer: ReturnType<typeof setTimeout> | undefined;
}

export class Requests {
  private readonly waiting = new Map<number, Waiting>();

  /**
   * A promise for the answer to request `id`, rejected after `timeoutMs` (0: no timeout) with
   * `onTimeout()`'s error.
   */
  wait<T>(id: number, timeoutMs: number, onTimeout: () => TetherError): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer =
        timeoutMs > 0
          ? setTimeout(() => {
              this.waiting.delete(id);
              reject(onTimeout());
            }, timeoutMs)
          : undefined;
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
    });
  }

  has(id: number): boolean {
    return this.waiting.has(id);
  }

  /** Resolves request `id`; false when nobody waits for it (timed out, or not ours). */
  resolve(id: number, value: unknown): boolean {
    const w = this.take(id);
    w?.resolve(value);
    return w !== undefined;
  }

  /** Rejects request `id`; false when nobody waits for it. */
  reject(id: number, err: TetherError): boolean {
    const w = this.take(id);
    w?.reject(err);
    return w !== undefined;
  }

  /** Rejects every waiting request (the connection ended, or the client closed). */
  rejectAll(err: TetherError): void {
    for (const id of [...this.waiting.keys()]) this.reject(id, err);
  }

  private take(id: number): Waiting | undefined {
    const w = this.waiting.get(id);
    if (!w) return undefined;
    this.waiting.delete(id);
    clearTimeout(w.timer);
    return w;
  }
}
