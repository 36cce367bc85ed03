// Shared by the SDK benchmarks: a real `tether serve` on port 0 (addresses read from its start
// line), tokens, and readings of a process from /proc. Every wait is bounded.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, "../..");
export const APP = "demo";
export const SECRET = "bench-secret-0123456789abcdef";
export const API_KEY = "bench-api-key-0123456789abcdef";
/** The SDK as `npm run build` leaves it in sdk/js. */
export const SDK = join(repo, "sdk/js/dist/index.js");

const TICKS = 100; // USER_HZ on Linux

/** Resolves after `ms`. */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Wall-clock time in ms with sub-millisecond precision, comparable across processes. */
export const nowMs = () => performance.timeOrigin + performance.now();

/**
 * A `tether serve` with a config of its own in a temporary directory. Listeners on port 0
 * unless `ws` / `http` are given (a restart keeps them); `gateway` and `store` are extra TOML
 * lines of those sections.
 */
export class Server {
  constructor(options = {}) {
    this.options = options;
    this.bin = options.bin ?? process.env.TETHER_BIN ?? join(repo, "target/release/tether");
    this.dir = mkdtempSync(join(tmpdir(), "tether-sdk-bench-"));
    this.child = undefined;
    this.log = [];
  }

  static async start(options) {
    const server = new Server(options);
    try {
      await server.launch();
    } catch (e) {
      await server.stop();
      throw e;
    }
    return server;
  }

  config() {
    const o = this.options;
    return `
[node]
id = "sdk-bench"
data_dir = ${JSON.stringify(join(this.dir, "data"))}

[listen]
tcp = "127.0.0.1:0"
ws = ${JSON.stringify(o.ws ?? "127.0.0.1:0")}
http = ${JSON.stringify(o.http ?? "127.0.0.1:0")}
backlog = 4096

[limits]
max_connections = 1000000
max_connections_per_ip = 1000000

[gateway]
heartbeat_max = "120s"
${o.gateway ?? ""}

[store]
${o.store ?? 'backend = "memory"'}

[[apps]]
id = "${APP}"
secret = "${SECRET}"
api_key = "${API_KEY}"
[[apps.topics]]
pattern = "*"
allow = "open"
`;
  }

  /** Starts the process; resolves once its start line names the addresses. */
  launch(timeoutMs = 20000) {
    const path = join(this.dir, "tether.toml");
    writeFileSync(path, this.config());
    this.log = [];
    const child = spawn(this.bin, ["serve", "--config", path, "--log-format", "json"], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, TETHER_LOG: "info" },
    });
    this.child = child;
    this.exited = new Promise((r) => child.once("exit", r));
    return new Promise((res, rej) => {
      let buffered = "";
      const timer = setTimeout(() => {
        rej(new Error(`tether did not start within ${timeoutMs} ms:\n${this.log.join("\n")}`));
        child.kill("SIGKILL");
      }, timeoutMs);
      child.once("exit", (code) => {
        clearTimeout(timer);
        rej(new Error(`tether exited with ${code}:\n${this.log.join("\n")}`));
      });
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (chunk) => {
        buffered += chunk;
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (this.log.length < 100) this.log.push(line);
          if (!line.includes('"tether node started"')) continue;
          this.startedAt = nowMs();
          const ws = /"ws":"(?:Some\()?([^)"]+)\)?"/.exec(line)?.[1];
          const http = /"http":"([^"]+)"/.exec(line)?.[1];
          if (!ws || !http) return rej(new Error(`no addresses in the start line: ${line}`));
          this.wsAddr = ws;
          this.httpAddr = http;
          this.wsUrl = `ws://${ws}/ws`;
          this.httpUrl = `http://${http}`;
          clearTimeout(timer);
          res();
        }
      });
    });
  }

  get pid() {
    return this.child?.pid;
  }

  /** SIGTERM (a graceful shutdown); SIGKILL after `graceMs`. Resolves when it has exited. */
  async stopProcess(graceMs = 30000, signal = "SIGTERM") {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** Stops the node and starts it again on the same ports and data directory. */
  async restart(signal = "SIGTERM") {
    await this.stopProcess(30000, signal);
    this.stoppedAt = nowMs();
    this.options = { ...this.options, ws: this.wsAddr, http: this.httpAddr };
    // The port may still be held for a moment by the old listener's last sockets.
    for (let i = 0; ; i++) {
      try {
        await this.launch();
        return;
      } catch (e) {
        if (i >= 20 || !/in use/i.test(String(e.message))) throw e;
        await sleep(50);
      }
    }
  }

  async stop() {
    await this.stopProcess();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Pushes through the HTTP API; returns the status. */
  async push(users, payload, qos) {
    const res = await fetch(`${this.httpUrl}/v1/apps/${APP}/push`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ users, qos, payload }),
      signal: AbortSignal.timeout(5000),
    });
    await res.arrayBuffer();
    return res.status;
  }
}

/** An HS256 token of the demo app for `user`, valid for `ttlS` seconds. */
export function token(user, ttlS = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const b64 = (s) => Buffer.from(s).toString("base64url");
  const header = b64(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64(JSON.stringify({ sub: user, iat: now, exp: now + ttlS, app: APP }));
  const sig = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${sig}`;
}

/** Resident memory of a process in bytes (VmRSS). */
export function rssBytes(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** Proportional set size of a process in bytes (shared pages divided among their users). */
export function pssBytes(pid) {
  const m = /Pss:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** CPU seconds (user, system) a process has used, all its threads. */
export function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { user: Number(fields[11]) / TICKS, system: Number(fields[12]) / TICKS };
}

/** Busy and total jiffies of the whole machine, from /proc/stat. */
export function machineTicks() {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = cpu[3] + cpu[4];
  const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

/** Cores busy between two `machineTicks()` readings, out of `nproc`. */
export function coresBusy(before, after, cores) {
  const total = after.total - before.total;
  return total > 0 ? ((after.busy - before.busy) / total) * cores : 0;
}

/** The 1-minute load average. */
export function loadavg() {
  return Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
}

/** The `q`-quantile (0..1) of numbers, by nearest rank. */
export function quantile(values, q) {
  if (values.length === 0) return NaN;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];
}

/** Messages between processes: one JSON object per line on a stream. */
export function onLines(stream, fn) {
  let buffered = "";
  stream.setEncoding("utf8");
  stream.on("data", (chunk) => {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (line.trim()) fn(JSON.parse(line));
    }
  });
}

/** Waits (bounded) until `predicate()` holds, polling every `everyMs`. */
export async function until(predicate, timeoutMs, what, everyMs = 50) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}
