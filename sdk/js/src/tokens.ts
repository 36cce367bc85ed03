/**
 * The bindings' tokens and their refreshes (docs/protocol.md, section 7.4), without I/O:
 * which token a connect sends, which `refresh` a `refreshed` or a 4306 answers, whether and
 * when to ask `getToken` once more.
 *
 * A refused or failed refresh is retried once per announced expiry, halfway to it, when at
 * least 2 s remain: a backend that keeps failing is not hammered, and a token is not left to
 * expire after one hiccup.
 */

/** The least time left to an expiry for a retry to be worth it. */
const MIN_LEFT_FOR_RETRY_MS = 2000;

interface AppTokens {
  token: string;
  /** The expiry the server last announced (`expiring`), in seconds since the epoch. */
  expiresS: number | undefined;
  /** Whether the retry for that expiry was used. */
  retried: boolean;
  fetching: boolean;
  retryTimer: ReturnType<typeof setTimeout> | undefined;
}

export class Tokens {
  private readonly apps = new Map<string, AppTokens>();
  /** Refreshes sent, by request id. */
  private readonly sent = new Map<number, { app: string; token: string }>();
  /** Whether the server refused a new token on the current connection. */
  private refusedHere = false;

  constructor(bindings: { app: string; token: string }[]) {
    for (const b of bindings) {
      this.apps.set(b.app, { token: b.token, expiresS: undefined, retried: false, fetching: false, retryTimer: undefined });
    }
  }

  /** The token the next connect sends for `app`. */
  token(app: string): string {
    return this.apps.get(app)?.token ?? "";
  }

  set(app: string, token: string): void {
    const t = this.apps.get(app);
    if (t) t.token = token;
  }

  connectionStarted(): void {
    this.refusedHere = false;
    this.sent.clear();
  }

  /**
   * Whether a close with 4205 should fetch new tokens and reconnect: only with `getToken`,
   * and not when the server refused a new token on that connection (the source would give
   * another refused one, in a loop).
   */
  canRenew(hasGetToken: boolean): boolean {
    return hasGetToken && !this.refusedHere;
  }

  expiring(app: string, expiresS: number): void {
    const t = this.apps.get(app);
    if (!t || t.expiresS === expiresS) return;
    t.expiresS = expiresS;
    t.retried = false;
  }

  /** False when a fetch for `app` is already under way. */
  startFetch(app: string): boolean {
    const t = this.apps.get(app);
    if (!t || t.fetching) return false;
    t.fetching = true;
    return true;
  }

  endFetch(app: string): void {
    const t = this.apps.get(app);
    if (t) t.fetching = false;
  }

  sentRefresh(id: number, app: string, token: string): void {
    this.sent.set(id, { app, token });
  }

  /** A `refreshed` for request `id`: the new token is the binding's; its app. */
  refreshed(id: number, app: string): string | undefined {
    const s = this.sent.get(id);
    if (!s || s.app !== app) return undefined;
    this.sent.delete(id);
    this.set(app, s.token);
    return app;
  }

  /** An `error` for request `id`, if it answers a refresh: its app and when to retry. */
  refused(id: number): { app: string; retryInMs: number | undefined } | undefined {
    const s = this.sent.get(id);
    if (!s) return undefined;
    this.sent.delete(id);
    this.refusedHere = true;
    return { app: s.app, retryInMs: this.retryDelay(s.app) };
  }

  /** When to ask for a token once more (halfway to the expiry), or undefined: not again. */
  retryDelay(app: string): number | undefined {
    const t = this.apps.get(app);
    if (!t || t.retried || t.expiresS === undefined) return undefined;
    const left = t.expiresS * 1000 - Date.now();
    if (left < MIN_LEFT_FOR_RETRY_MS) return undefined;
    t.retried = true;
    return left / 2;
  }

  retryLater(app: string, delayMs: number, retry: () => void): void {
    const t = this.apps.get(app);
    if (!t) return;
    clearTimeout(t.retryTimer);
    t.retryTimer = setTimeout(retry, delayMs);
  }

  /** The client closed: no retry fires. */
  stop(): void {
    for (const t of this.apps.values()) clearTimeout(t.retryTimer);
  }
}
