/**
 * A real `tether serve` for the tests: a config written to a temporary directory, listeners
 * on port 0 (the addresses are read from the node's "tether node started" log line), and
 * helpers for the HTTP API and tokens. Every wait is bounded.
 *
 * The binary is `$TETHER_BIN`, else `../../target/debug/tether`. Missing, the tests fail under
 * `CI=true` and are skipped (with a message) otherwise.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { TestContext } from "node:test";
import WebSocket from "ws";

import { TetherClient, type ClientEvents, type ClientOptions, type FetchLike, type WebSocketConstructor } from "../src/index.js";

export const APP = "demo";
export const SECRET = "demo-secret-0123456789";
export const API_KEY = "demo-api-key-0123456789";
export const OTHER_APP = "other";
export const OTHER_SECRET = "other-secret-0123456789";
export const OTHER_API_KEY = "other-api-key-0123456789";

/** Upper bound of a single wait in the tests. */
export const WAIT_MS = 5000;

const BIN = process.env.TETHER_BIN ?? resolve(process.cwd(), "../../target/debug/tether");

/**
 * Whether the tether binary is there. Under CI=true a missing binary fails the test; locally
 * the test is skipped with a message saying how to build it.
 */
export function haveServer(t: TestContext): boolean {
  if (existsSync(BIN)) return true;
  const message = `tether binary not found at ${BIN}: build it with \`cargo build -p tether\` or set TETHER_BIN`;
  if (process.env.CI === "true") throw new Error(message);
  t.skip(message);
  return false;
}

export interface ServerOptions {
  /** Extra TOML appended to the [gateway] section. */
  gateway?: string;
  /** Extra TOML appended to the [store] section. */
  store?: string;
  /** Extra TOML appended to the [node] section. */
  node?: string;
  /** `[[apps.topics]]` rules of the demo app placed before its catch-all open rule. */
  topics?: string;
  /** Extra keys of the demo app (e.g. `webhook = "..."`). */
  demoApp?: string;
  /** Extra top-level sections. */
  extra?: string;
  /** Fixed listener addresses (default: port 0). */
  ws?: string;
  http?: string;
}

export class Server {
  wsUrl = "";
  httpUrl = "";
  private child: ChildProcess | undefined;
  private readonly dir: string;
  private log: string[] = [];

  private constructor(private options: ServerOptions) {
    this.dir = mkdtempSync(join(tmpdir(), "tether-js-test-"));
  }

  /** Starts a node; `stop()` it in a `finally` or `t.after`. */
  static async start(options: ServerOptions = {}): Promise<Server> {
    const server = new Server(options);
    try {
      await server.launch();
    } catch (e) {
      await server.stop();
      throw e;
    }
    return server;
  }

  /**
   * Stops the node (SIGTERM: a graceful shutdown, clients get 4100; `hard`: SIGKILL, connections
   * just drop) and starts it again on the same ports and data.
   */
  async restart(options: { hard?: boolean } = {}): Promise<void> {
    await this.stopProcess(options.hard ? "SIGKILL" : "SIGTERM");
    this.options = { ...this.options, ws: hostPort(this.wsUrl), http: hostPort(this.httpUrl) };
    await this.launch();
  }

  /** Pauses (SIGSTOP) or resumes (SIGCONT) the node: a silent server for heartbeat tests. */
  pause(paused: boolean): void {
    this.child?.kill(paused ? "SIGSTOP" : "SIGCONT");
  }

  async stop(): Promise<void> {
    this.child?.kill("SIGCONT");
    await this.stopProcess();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async stopProcess(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise<void>((res) => child.once("exit", () => res()));
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), WAIT_MS);
    await exited;
    clearTimeout(timer);
  }

  private config(): string {
    const o = this.options;
    return `
[node]
id = "js-test"
data_dir = ${JSON.stringify(join(this.dir, "data"))}
${o.node ?? ""}

[listen]
tcp = "127.0.0.1:0"
ws = ${JSON.stringify(o.ws ?? "127.0.0.1:0")}
http = ${JSON.stringify(o.http ?? "127.0.0.1:0")}
mqtt = ""

[gateway]
heartbeat_min = "100ms"
shutdown_grace = "2s"
${o.gateway?.includes("shutdown_spread") ? "" : 'shutdown_spread = "100ms"'}
${o.gateway ?? ""}

[store]
durability = "sync"
${o.store ?? ""}

${o.extra ?? ""}

[[apps]]
id = "${APP}"
secret = "${SECRET}"
api_key = "${API_KEY}"
${o.demoApp ?? ""}
${o.topics ?? ""}

[[apps.topics]]
pattern = "*"
allow = "open"

[[apps]]
id = "${OTHER_APP}"
secret = "${OTHER_SECRET}"
api_key = "${OTHER_API_KEY}"
`;
  }

  private launch(): Promise<void> {
    const path = join(this.dir, "tether.toml");
    writeFileSync(path, this.config());
    this.log = [];
    const child = spawn(BIN, ["serve", "--config", path, "--log-format", "json"], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, TETHER_LOG: "info" },
    });
    this.child = child;
    return new Promise((resolvePromise, reject) => {
      let buffered = "";
      const timer = setTimeout(() => {
        reject(new Error(`tether did not start within ${WAIT_MS} ms; its log:\n${this.log.join("\n")}`));
        child.kill("SIGKILL");
      }, WAIT_MS);
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`tether exited with ${code} before starting; its log:\n${this.log.join("\n")}`));
      });
      child.stderr!.setEncoding("utf8");
      child.stderr!.on("data", (chunk: string) => {
        buffered += chunk;
        let nl: number;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (this.log.length < 200) this.log.push(line);
          if (!line.includes('"tether node started"')) continue;
          // The listener fields print as `Some(addr)` today; a plain `addr` is read too.
          const ws = /"ws":"(?:Some\()?([^)"]+)\)?"/.exec(line)?.[1];
          const http = /"http":"([^"]+)"/.exec(line)?.[1];
          if (!ws || !http) {
            reject(new Error(`no addresses in the start line: ${line}`));
            return;
          }
          this.wsUrl = `ws://${ws}/ws`;
          this.httpUrl = `http://${http}`;
          clearTimeout(timer);
          resolvePromise();
        }
      });
    });
  }

  /** A request to the HTTP API with the app's key; the JSON answer. */
  async api(method: string, path: string, body?: unknown, key = API_KEY): Promise<{ status: number; json: any }> {
    const res = await fetch(`${this.httpUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(WAIT_MS),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : undefined };
  }

  /** Pushes to users of an app; fails the test on anything but 200. */
  async push(users: string[], payload: unknown, qos: 0 | 1, app = APP, key = API_KEY): Promise<any> {
    const body = payload instanceof Uint8Array ? { users, qos, payload_base64: Buffer.from(payload).toString("base64") } : { users, qos, payload };
    const res = await this.api("POST", `/v1/apps/${app}/push`, body, key);
    if (res.status !== 200) throw new Error(`push answered ${res.status}: ${JSON.stringify(res.json)}`);
    return res.json;
  }

  async publish(topic: string, payload: unknown, qos: 0 | 1): Promise<any> {
    const res = await this.api("POST", `/v1/apps/${APP}/topics/${topic}/publish`, { payload, qos });
    if (res.status !== 200) throw new Error(`publish answered ${res.status}: ${JSON.stringify(res.json)}`);
    return res.json;
  }

  /** The user's presence (`GET .../presence`). */
  async presence(user: string): Promise<any> {
    const res = await this.api("GET", `/v1/apps/${APP}/users/${user}/presence`);
    if (res.status !== 200) throw new Error(`presence answered ${res.status}: ${JSON.stringify(res.json)}`);
    return res.json;
  }

  /** Waits (bounded) until the presence API shows `device` of `user` acked at `seq`. */
  async ackedAt(user: string, device: string, seq: number): Promise<void> {
    const deadline = Date.now() + WAIT_MS;
    let devices: unknown;
    while (Date.now() < deadline) {
      devices = (await this.presence(user)).devices;
      if ((devices as { device: string; acked: number }[]).some((d) => d.device === device && d.acked === seq)) return;
      await sleep(50);
    }
    throw new Error(`device ${device} of ${user} not acked at ${seq} within ${WAIT_MS} ms; presence devices: ${JSON.stringify(devices)}`);
  }
}

function hostPort(url: string): string {
  return new URL(url).host;
}

/** An HS256 token for `user`, valid for `ttlS` seconds (negative: expired). */
export function token(user: string, options: { ttlS?: number; app?: string; secret?: string; claims?: object } = {}): string {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { sub: user, iat: now, exp: now + (options.ttlS ?? 600), app: options.app ?? APP, ...options.claims };
  const payload = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", options.secret ?? SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

function b64url(text: string): string {
  return Buffer.from(text).toString("base64url");
}

/**
 * Client options for `user` of the demo app on `server`, with the `ws` package, on WebSocket
 * only: these tests watch what goes over WebSocket, and keep clients away from the node by
 * making WebSockets fail, which the fallback would get past. SSE and the fallback are
 * sse.test.ts's (which passes `transports`).
 */
export function options(server: Server, user: string, extra: Partial<ClientOptions> = {}): ClientOptions {
  return {
    url: server.wsUrl,
    bindings: [{ app: APP, token: token(user) }],
    transports: ["websocket"],
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    connectTimeoutMs: 3000,
    reconnect: { initialMs: 50, maxMs: 500 },
    ...extra,
  };
}

/** Collects a client's events of one type, and waits (bounded) for some to arrive. */
export class Collector<K extends keyof ClientEvents> {
  readonly seen: ClientEvents[K][] = [];
  private waiters: (() => void)[] = [];

  constructor(client: TetherClient, type: K) {
    client.on(type, (e) => {
      this.seen.push(e);
      for (const w of this.waiters) w();
    });
  }

  /** Waits until `predicate` holds for the events seen so far; fails after `timeoutMs`. */
  until(predicate: (seen: ClientEvents[K][]) => boolean, what: string, timeoutMs = WAIT_MS): Promise<void> {
    if (predicate(this.seen)) return Promise.resolve();
    return new Promise((res, rej) => {
      const check = () => {
        if (!predicate(this.seen)) return;
        clearTimeout(timer);
        this.waiters = this.waiters.filter((w) => w !== check);
        res();
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== check);
        rej(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; seen: ${JSON.stringify(this.seen).slice(0, 2000)}`));
      }, timeoutMs);
      this.waiters.push(check);
    });
  }

  /** Waits for at least `n` events. */
  count(n: number, what: string, timeoutMs = WAIT_MS): Promise<void> {
    return this.until((s) => s.length >= n, `${n} ${what}`, timeoutMs);
  }
}

/** A webhook that answers by the upstream's kind; closed with the test. */
export async function webhook(t: { after(fn: () => unknown): void }): Promise<{ url: string; seen: any[] }> {
  const seen: any[] = [];
  const http: HttpServer = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const event = JSON.parse(body);
      seen.push(event);
      switch (event.kind) {
        case "chat":
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify({ delivered: true, echo: event.payload }));
          return;
        case "slow":
          setTimeout(() => {
            res.writeHead(200, { "content-type": "application/json" });
            res.end("{}");
          }, 1500);
          return;
        case "refuse":
          res.writeHead(403, { "content-type": "text/plain" });
          res.end("no");
          return;
        default:
          res.writeHead(204);
          res.end();
      }
    });
  });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
  t.after(() => {
    http.closeAllConnections();
    http.close();
  });
  return { url: `http://127.0.0.1:${(http.address() as AddressInfo).port}/hook`, seen };
}

/**
 * The global `fetch`, recording each SSE stream it opens, that can `cut()` them (as a network
 * drop: the client's read fails) and, while `gate.open` is false, sends stream requests to a
 * closed port. POSTs always go through.
 */
export function cuttableFetch(gate = { open: true }): { fetch: FetchLike; cut(): void; streams: string[]; posts: string[] } {
  const live = new Set<AbortController>();
  const streams: string[] = [];
  const posts: string[] = [];
  const wrapped: FetchLike = async (url, init) => {
    if (init.method === "POST") {
      posts.push(String(init.body));
      return fetch(url, init);
    }
    streams.push(url);
    const target = gate.open ? url : url.replace(/^http:\/\/[^/]+/, "http://127.0.0.1:1");
    const controller = new AbortController();
    live.add(controller);
    const signal = init.signal ? AbortSignal.any([init.signal, controller.signal]) : controller.signal;
    // The body is read after this returns: the controller stays until a cut.
    return fetch(target, { ...init, signal });
  };
  return {
    fetch: wrapped,
    cut() {
      for (const c of live) c.abort(new Error("cut by the test"));
      live.clear();
    },
    streams,
    posts,
  };
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Fails when `promise` takes longer than `ms`. */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const limit = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/**
 * A `ws` WebSocket class that records every frame the client sends, parsed. While
 * `gate.open` is false its connections go to a closed port: that keeps a client away from
 * the node while a test changes what the node holds.
 */
export function recordingWebSocket(gate = { open: true }): {
  WebSocket: WebSocketConstructor;
  sent: Record<string, any>[];
  opened: number[];
  /** Drops every socket opened (as a network drop: no close frame, 1006). */
  drop(): void;
} {
  const sent: Record<string, any>[] = [];
  /** When each socket was opened (`Date.now()`). */
  const opened: number[] = [];
  const sockets: WebSocket[] = [];
  class Recording extends WebSocket {
    constructor(url: string) {
      super(gate.open ? url : "ws://127.0.0.1:1/ws");
      opened.push(Date.now());
      sockets.push(this);
    }

    override send(data: any, ...rest: any[]): void {
      sent.push(JSON.parse(String(data)));
      (super.send as (...args: any[]) => void)(data, ...rest);
    }
  }
  const drop = () => {
    for (const socket of sockets.splice(0)) socket.terminate();
  };
  return { WebSocket: Recording as unknown as WebSocketConstructor, sent, opened, drop };
}
