/**
 * What the browser test runs around the page: a real `tether serve` (port 0, a temporary data
 * dir, read back from its start line), a webhook, a static HTTP server for the page and the
 * SDK's build (its own port, so the page's origin is not the API's), a TCP proxy in front of
 * the WebSocket listener that can cut the connection like a network drop, and headless
 * Chromium driven through puppeteer-core. Every wait is bounded.
 *
 * Tools: `$TETHER_BIN` (else `target/debug/tether` of the repository) and Chromium
 * (`$CHROMIUM_BIN`, else `chromium` on the PATH: Debian's package). When one is missing, the
 * tests fail under `CI=true` and are skipped with the reason otherwise.
 */

import { execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer, request as httpRequest } from "node:http";
import { createServer as createTcpServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, dirname, extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

import puppeteer from "puppeteer-core";

const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, "../../..");
const EXAMPLE = resolve(HERE, "..");
/** The SDK's ESM build made by `npm run build` here (tsc with sdk/js's own tsconfig). */
const SDK_BUILD = resolve(HERE, "build/sdk");

export const APP = "demo";
const SECRET = "demo-secret-0123456789";
export const API_KEY = "demo-api-key-0123456789";

/** Upper bound of one wait. */
export const WAIT_MS = 10_000;

const TETHER_BIN = process.env.TETHER_BIN ?? join(REPO, "target/debug/tether");

/** Where screenshots go: `$BROWSER_ARTIFACTS`, else `target/browser-artifacts` of the repository. */
export const ARTIFACTS = process.env.BROWSER_ARTIFACTS ?? join(REPO, "target/browser-artifacts");

/** Chromium's path, or undefined. */
function findChromium() {
  if (process.env.CHROMIUM_BIN) return existsSync(process.env.CHROMIUM_BIN) ? process.env.CHROMIUM_BIN : undefined;
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    for (const name of ["chromium", "chromium-browser"]) {
      const path = join(dir, name);
      if (dir && existsSync(path)) return path;
    }
  }
  return undefined;
}

/**
 * Whether the tether binary, Chromium and the SDK's build are there. Missing under CI=true,
 * the test fails; otherwise it is skipped with the reason.
 */
export function haveTools(t) {
  const missing = [];
  if (!existsSync(TETHER_BIN)) missing.push(`the tether binary (${TETHER_BIN}): \`cargo build -p tether\` or set TETHER_BIN`);
  if (!findChromium()) missing.push("Chromium: `apt-get install chromium` (Debian), or set CHROMIUM_BIN");
  if (!existsSync(join(SDK_BUILD, "index.js"))) missing.push("the SDK's build: run the tests with `npm test`, which builds it");
  if (missing.length === 0) return true;
  const message = `missing ${missing.join("; ")}`;
  if (process.env.CI === "true") throw new Error(message);
  t.skip(message);
  return false;
}

/** A real `tether serve` with the demo app; `stop()` it. */
export class Server {
  wsUrl = "";
  httpUrl = "";
  #child;
  #dir;
  #log = [];

  constructor(dir) {
    this.#dir = dir;
  }

  /** `webhook`: the demo app's webhook URL; `extra`: more TOML at the end. */
  static async start({ webhook, extra = "" } = {}) {
    const server = new Server(mkdtempSync(join(tmpdir(), "tether-browser-test-")));
    try {
      await server.#launch(webhook, extra);
    } catch (e) {
      await server.stop();
      throw e;
    }
    return server;
  }

  get configPath() {
    return join(this.#dir, "tether.toml");
  }

  async stop() {
    const child = this.#child;
    this.#child = undefined;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((res) => child.once("exit", res));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), WAIT_MS);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.#dir, { recursive: true, force: true });
  }

  #launch(webhook, extra) {
    writeFileSync(
      this.configPath,
      `
[node]
id = "browser-test"
data_dir = ${JSON.stringify(join(this.#dir, "data"))}

[listen]
tcp = "127.0.0.1:0"
ws = "127.0.0.1:0"
http = "127.0.0.1:0"
mqtt = ""

[gateway]
shutdown_grace = "1s"
shutdown_spread = "100ms"

[store]
durability = "sync"

[[apps]]
id = "${APP}"
secret = "${SECRET}"
api_key = "${API_KEY}"
${webhook ? `webhook = ${JSON.stringify(webhook)}` : ""}

[[apps.topics]]
pattern = "*"
allow = "open"

${extra}
`,
    );
    const child = spawn(TETHER_BIN, ["serve", "--config", this.configPath, "--log-format", "json"], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, TETHER_LOG: "info" },
    });
    this.#child = child;
    return new Promise((res, rej) => {
      let buffered = "";
      const timer = setTimeout(() => {
        rej(new Error(`tether did not start within ${WAIT_MS} ms; its log:\n${this.#log.join("\n")}`));
        child.kill("SIGKILL");
      }, WAIT_MS);
      child.once("exit", (code) => {
        clearTimeout(timer);
        rej(new Error(`tether exited with ${code} before starting; its log:\n${this.#log.join("\n")}`));
      });
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (chunk) => {
        buffered += chunk;
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (this.#log.length < 200) this.#log.push(line);
          if (!line.includes('"tether node started"')) continue;
          // The listener fields print as `Some(addr)` today; a plain `addr` is read too.
          const ws = /"ws":"(?:Some\()?([^)"]+)\)?"/.exec(line)?.[1];
          const http = /"http":"([^"]+)"/.exec(line)?.[1];
          clearTimeout(timer);
          if (!ws || !http) return rej(new Error(`no addresses in the start line: ${line}`));
          this.wsUrl = `ws://${ws}/ws`;
          this.httpUrl = `http://${http}`;
          res();
        }
      });
    });
  }

  /** A connection token for `user`, minted by `tether token` as the example's README says. */
  token(user) {
    return new Promise((res, rej) => {
      execFile(
        TETHER_BIN,
        ["token", "--config", this.configPath, "--app", APP, "--user", user, "--ttl", "10m"],
        { timeout: WAIT_MS },
        (err, stdout, stderr) => (err ? rej(new Error(`tether token failed: ${err.message}\n${stderr}`)) : res(stdout.trim())),
      );
    });
  }

  /** A request to the HTTP API with the app's key; its status and JSON answer. */
  async api(method, path, body) {
    const res = await fetch(`${this.httpUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(WAIT_MS),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : undefined };
  }

  async #ok(method, path, body) {
    const res = await this.api(method, path, body);
    if (res.status !== 200) throw new Error(`${method} ${path} answered ${res.status}: ${JSON.stringify(res.json)}`);
    return res.json;
  }

  push(user, payload, qos) {
    return this.#ok("POST", `/v1/apps/${APP}/push`, { users: [user], payload, qos });
  }

  publish(topic, payload, qos) {
    return this.#ok("POST", `/v1/apps/${APP}/topics/${encodeURIComponent(topic)}/publish`, { payload, qos });
  }

  presence(user) {
    return this.#ok("GET", `/v1/apps/${APP}/users/${encodeURIComponent(user)}/presence`);
  }

  kick(user) {
    return this.#ok("POST", `/v1/apps/${APP}/users/${encodeURIComponent(user)}/kick`);
  }
}

/** The demo app's webhook: records what it receives and answers upstreams with an echo. */
export class Webhook {
  received = [];

  static async start() {
    const hook = new Webhook();
    hook.server = createHttpServer((req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        let body;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
        } catch {
          res.writeHead(400).end();
          return;
        }
        hook.received.push(body);
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify(body.type === "upstream" ? { echo: body.payload, user: body.user } : {}));
      });
    });
    hook.url = `http://${await listen(hook.server)}/hook`;
    return hook;
  }

  close() {
    return closeServer(this.server);
  }
}

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".map": "application/json", ".ts": "text/plain" };

/**
 * The page and the SDK's build over HTTP, laid out as in the repository, so the page's import
 * map (`../../sdk/js/dist/index.js`) works the same here and from a checkout.
 */
export class StaticSite {
  static async start() {
    const site = new StaticSite();
    site.server = createHttpServer((req, res) => {
      const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
      const file = site.#file(path);
      if (req.method !== "GET" || !file) {
        res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
        return;
      }
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
      res.end(readFileSync(file));
    });
    site.port = Number((await listen(site.server)).split(":").pop());
    return site;
  }

  /** The page's URL on `host` (127.0.0.1, or localhost for another origin). */
  pageUrl(host = "127.0.0.1") {
    return `http://${host}:${this.port}/examples/browser/`;
  }

  origin(host = "127.0.0.1") {
    return `http://${host}:${this.port}`;
  }

  #file(path) {
    if (path === "/examples/browser/") return join(EXAMPLE, "index.html");
    if (path === "/examples/browser/app.js") return join(EXAMPLE, "app.js");
    const prefix = "/sdk/js/dist/";
    if (!path.startsWith(prefix)) return undefined;
    const file = normalize(join(SDK_BUILD, path.slice(prefix.length)));
    if (!file.startsWith(SDK_BUILD + sep)) return undefined;
    return existsSync(file) && statSync(file).isFile() ? file : undefined;
  }

  close() {
    return closeServer(this.server);
  }
}

/**
 * A TCP proxy in front of the WebSocket listener. `cut()` drops the connections through it
 * and refuses new ones (the browser sees its WebSocket die, as in a network drop: the server
 * sends no close frame through it); `restore()` lets them through again.
 */
export class Proxy {
  #sockets = new Set();
  #open = true;

  static async start(wsUrl) {
    const target = new URL(wsUrl);
    const proxy = new Proxy();
    proxy.server = createTcpServer((client) => {
      if (!proxy.#open) {
        client.destroy();
        return;
      }
      const upstream = tcpConnect(Number(target.port), target.hostname);
      for (const [a, b] of [
        [client, upstream],
        [upstream, client],
      ]) {
        proxy.#sockets.add(a);
        a.on("error", () => b.destroy());
        a.on("close", () => {
          proxy.#sockets.delete(a);
          b.destroy();
        });
        a.pipe(b);
      }
    });
    proxy.wsUrl = `ws://${await listen(proxy.server)}/ws`;
    return proxy;
  }

  cut() {
    this.#open = false;
    for (const s of this.#sockets) s.destroy();
  }

  restore() {
    this.#open = true;
  }

  close() {
    this.cut();
    return closeServer(this.server);
  }
}

/**
 * An HTTP proxy in front of the WebSocket listener that strips WebSocket upgrades, as some
 * corporate proxies do: every upgrade is answered `403` (the browser sees 1006), every other
 * request (the SSE stream, its POSTs, their preflights) is passed on, streamed both ways.
 * `upgrades` counts the upgrades refused; `wsUrl` is the URL a page is given.
 */
export class UpgradeStrippingProxy {
  upgrades = 0;
  #sockets = new Set();

  static async start(wsUrl) {
    const target = new URL(wsUrl);
    const proxy = new UpgradeStrippingProxy();
    proxy.server = createHttpServer((req, res) => {
      const upstream = httpRequest(
        { host: target.hostname, port: Number(target.port), method: req.method, path: req.url, headers: req.headers },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      upstream.on("error", () => res.destroy());
      // The page went (or aborted the stream): so does the request to the node.
      res.on("close", () => upstream.destroy());
      req.pipe(upstream);
    });
    proxy.server.on("connection", (socket) => {
      proxy.#sockets.add(socket);
      socket.on("close", () => proxy.#sockets.delete(socket));
    });
    proxy.server.on("upgrade", (_req, socket) => {
      proxy.upgrades += 1;
      socket.on("error", () => {});
      socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    });
    proxy.wsUrl = `ws://${await listen(proxy.server)}/ws`;
    return proxy;
  }

  close() {
    for (const s of this.#sockets) s.destroy();
    return closeServer(this.server);
  }
}

/** Headless Chromium (Debian's package), with no browser download. */
export function launchChromium() {
  return puppeteer.launch({
    executablePath: findChromium(),
    headless: true,
    timeout: WAIT_MS,
    protocolTimeout: WAIT_MS * 3,
    // --no-sandbox: CI runs as root, where Chromium's sandbox does not start; the browser
    // only loads the test's own pages from 127.0.0.1.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--no-default-browser-check"],
  });
}

/** Saves a screenshot of `page` as `name`.png under ARTIFACTS; its path. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** Resolves once `check()` (sync or async) returns a truthy value, polled; fails after `timeoutMs`. */
export async function until(check, what, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function listen(server) {
  return new Promise((res, rej) => {
    server.once("error", rej);
    server.listen(0, "127.0.0.1", () => {
      const { address, port } = server.address();
      res(`${address}:${port}`);
    });
  });
}

function closeServer(server) {
  return new Promise((res) => {
    server.closeAllConnections?.();
    server.close(() => res());
  });
}

