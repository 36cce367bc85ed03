/**
 * Asking a dispatcher (`GET /v1/dispatch`, docs/protocol.md section 11) which WebSocket
 * endpoints to try, and remembering which failed since the last connection so that the
 * answer leaves them out. Uses the global `fetch` (browsers, Node 18+) or one passed in.
 *
 * An endpoint's SSE stream is the `sse` URL the answer gives with it, if any, else derived
 * from its WebSocket URL (section 14: `ws://host:port/ws` streams at `http://host:port/v1/sse`).
 */

import { TetherError } from "./errors.js";

/** Most failed endpoints reported at once (the oldest are forgotten first). */
const MAX_FAILED = 16;
/** Most endpoints taken from one answer. */
const MAX_ENDPOINTS = 64;

/** The reconnect delays a dispatcher asks for. */
export interface BackoffHint {
  initialMs: number;
  maxMs: number;
  jitter: number;
}

/** Where to connect: a WebSocket URL, and the SSE stream's URL when the dispatcher named one. */
export interface Endpoint {
  ws: string;
  sse?: string | undefined;
}

export interface DispatchAnswer {
  /** Endpoints to try, in order. */
  endpoints: Endpoint[];
  backoff: BackoffHint | undefined;
}

/** What the client passes to `fetch`. */
export interface FetchInit {
  method?: string;
  headers: Record<string, string>;
  body?: string;
  signal?: AbortSignal;
}

/** The parts of a `fetch` response the client reads (`body` and `headers` for SSE only). */
export interface FetchResponse {
  status: number;
  headers?: { get(name: string): string | null };
  body?: ReadableStream<Uint8Array> | null;
  text(): Promise<string>;
}

/** The WHATWG `fetch` (browsers, Node 18+), or anything that does the same for these calls. */
export type FetchLike = (url: string, init: FetchInit) => Promise<FetchResponse>;

export class Dispatcher {
  private failedUrls: string[] = [];
  private lastEndpoints: Endpoint[] = [];

  constructor(
    private readonly url: string,
    private readonly app: string,
    private token: string,
    private readonly zone: string | undefined,
    private readonly fetchImpl: FetchLike,
    private readonly timeoutMs: number,
  ) {}

  setToken(token: string): void {
    this.token = token;
  }

  /** An endpoint could not be used (refused, timed out, closed with a 41xx code). */
  failed(url: string): void {
    this.failedUrls = this.failedUrls.filter((u) => u !== url);
    if (this.failedUrls.length === MAX_FAILED) this.failedUrls.shift();
    this.failedUrls.push(url);
  }

  /** A connection came up: nothing failed since. */
  connected(): void {
    this.failedUrls = [];
  }

  /** What to try when the dispatcher cannot be asked: the endpoints it gave last. */
  fallback(): Endpoint[] {
    return [...this.lastEndpoints];
  }

  /**
   * Asks for endpoints. Rejects with a `dispatch` {@link TetherError}: `status` undefined when
   * the dispatcher could not be reached, else its HTTP status and error code (`no_endpoints`:
   * no node can take the client now; `bad_token`, `token_expired`, `unknown_app`: retrying
   * cannot help).
   */
  async ask(): Promise<DispatchAnswer> {
    const query = new URLSearchParams({ app: this.app, transport: "ws" });
    if (this.failedUrls.length > 0) query.set("failed", this.failedUrls.join(","));
    if (this.zone) query.set("zone", this.zone);
    const sep = this.url.includes("?") ? "&" : "?";
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeoutMs);
    let status: number;
    let text: string;
    // Called with no receiver: a browser's `fetch` throws "Illegal invocation" when called as
    // a method of another object (`this.fetchImpl(...)`).
    const fetchImpl = this.fetchImpl;
    try {
      const res = await fetchImpl(`${this.url}${sep}${query}`, {
        headers: { authorization: `Bearer ${this.token}` },
        signal: controller.signal,
      });
      status = res.status;
      text = await res.text();
    } catch (e) {
      throw new TetherError("dispatch", `dispatcher unreachable: ${errorText(e)}`, undefined, true);
    } finally {
      clearTimeout(timer);
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    if (status !== 200) {
      const err = body as { code?: unknown; error?: unknown } | undefined;
      const code = typeof err?.code === "string" ? err.code : "";
      const message = typeof err?.error === "string" ? err.error : `HTTP ${status}`;
      // No node can take the client now: the failed ones may be back by the next question.
      if (code === "no_endpoints") this.failedUrls = [];
      // A 4xx is about this client (its token, its app): asking again cannot help.
      const retryable = !(status >= 400 && status < 500) || status === 408 || status === 429;
      throw new TetherError("dispatch", `dispatcher answered ${status} ${code}: ${message}`, undefined, retryable, 0, status, code);
    }
    const answer = parseAnswer(body);
    if (answer.endpoints.length > 0) this.lastEndpoints = answer.endpoints;
    return answer;
  }
}

function parseAnswer(body: unknown): DispatchAnswer {
  const raw = body as { endpoints?: unknown; reconnect?: unknown } | undefined;
  if (!raw || !Array.isArray(raw.endpoints)) {
    throw new TetherError("dispatch", "the dispatcher's answer has no endpoint list", undefined, true, 0, 200, "");
  }
  const endpoints: Endpoint[] = [];
  for (const e of raw.endpoints) {
    const { url, sse } = (e ?? {}) as { url?: unknown; sse?: unknown };
    if (typeof url !== "string" || !/^wss?:\/\//.test(url)) continue;
    endpoints.push({ ws: url, sse: typeof sse === "string" && /^https?:\/\//.test(sse) ? sse : undefined });
    if (endpoints.length === MAX_ENDPOINTS) break;
  }
  const r = raw.reconnect as { initial_ms?: unknown; max_ms?: unknown; jitter?: unknown } | undefined;
  const backoff =
    r && typeof r.initial_ms === "number" && typeof r.max_ms === "number" && typeof r.jitter === "number"
      ? { initialMs: r.initial_ms, maxMs: r.max_ms, jitter: r.jitter }
      : undefined;
  return { endpoints, backoff };
}

export function errorText(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    return cause instanceof Error ? `${e.message}: ${cause.message}` : e.message;
  }
  return String(e);
}
