/** A small typed event emitter: no dependency, the same in browsers and Node. */

export class Emitter<Events extends object> {
  private readonly listeners = new Map<keyof Events, Set<(e: never) => void>>();

  /** Calls `fn` for every event of `type`; returns a function that removes it. */
  on<K extends keyof Events>(type: K, fn: (event: Events[K]) => void): () => void {
    let set = this.listeners.get(type);
    if (!set) {
      set = new Set();
      this.listeners.set(type, set);
    }
    set.add(fn as (e: never) => void);
    return () => this.off(type, fn);
  }

  /** Calls `fn` for the next event of `type` only. */
  once<K extends keyof Events>(type: K, fn: (event: Events[K]) => void): () => void {
    const off = this.on(type, (e) => {
      off();
      fn(e);
    });
    return off;
  }

  off<K extends keyof Events>(type: K, fn: (event: Events[K]) => void): void {
    this.listeners.get(type)?.delete(fn as (e: never) => void);
  }

  /**
   * Calls the listeners of `type` in the order they were added. A listener that throws does
   * not stop the others nor the client: the exception goes to `reportError` where it exists
   * (browsers, like an exception in a DOM event handler), else to `console.error`.
   */
  protected emit<K extends keyof Events>(type: K, event: Events[K]): void {
    const set = this.listeners.get(type);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as (e: Events[K]) => void)(event);
      } catch (e) {
        const report = (globalThis as { reportError?: (e: unknown) => void }).reportError;
        if (report) report(e);
        else console.error("tether: an event listener threw:", e);
      }
    }
  }
}
