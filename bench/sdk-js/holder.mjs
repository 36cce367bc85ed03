// One Node process holding connections for memory.mjs (forked, with --expose-gc). Its
// argument: {mode, url, first, count, rate, heartbeatMs}; mode "sdk" opens TetherClients,
// mode "json" bare `ws` sockets that send the JSON `connect` and wait for `connected` (the
// same wire as the SDK's, without the SDK). Over IPC it answers:
//   "ready" (its memory before any client), then on "go" opens `count` clients of users
//   u<first>.. at `rate` per second, "opened" when every connect() settled, on "measure" its
//   memory again (after a full GC), and exits on "exit".

import WebSocket from "ws";

import { APP, SDK, sleep, token } from "./lib.mjs";

const { TetherClient } = await import(SDK);
const { mode, url, first, count, rate, heartbeatMs } = JSON.parse(process.argv[2]);

const clients = [];
let ok = 0;
let failed = 0;
let dropped = 0;
const errors = {};

function memory() {
  globalThis.gc?.();
  return process.memoryUsage();
}

function sdkClient(n) {
  const client = new TetherClient({
    url,
    bindings: [{ app: APP, token: token(`u${n}`) }],
    WebSocket,
    heartbeatMs,
    connectTimeoutMs: 30000,
  });
  client.on("disconnected", () => dropped++);
  clients.push(client);
  return client.connect();
}

/** A bare socket with the SDK's wire: JSON `connect`, then idle (pings every half interval). */
function jsonSocket(n) {
  return new Promise((res, rej) => {
    const ws = new WebSocket(url);
    clients.push(ws);
    const timer = setTimeout(() => rej(new Error("no connected within 30 s")), 30000);
    ws.on("open", () => {
      const connect = { op: "connect", id: 1, version: 1, device: `json-${n}`, heartbeat_ms: heartbeatMs, bindings: [{ app: APP, token: token(`u${n}`) }] };
      ws.send(JSON.stringify(connect));
    });
    ws.once("message", (data) => {
      clearTimeout(timer);
      const frame = JSON.parse(String(data));
      if (frame.op !== "connected") return rej(new Error(`answered ${frame.op} ${frame.code ?? ""}`));
      setInterval(() => ws.send(JSON.stringify({ op: "ping", id: 2 })), frame.heartbeat_ms / 2).unref();
      ws.on("close", () => dropped++);
      res();
    });
    ws.on("error", (e) => rej(e));
  });
}

async function open() {
  const started = performance.now();
  const settled = [];
  for (let i = 0; i < count; i++) {
    // Paced on a schedule: client i starts at i / rate seconds.
    const due = started + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 1) await sleep(wait);
    settled.push(
      (mode === "sdk" ? sdkClient(first + i) : jsonSocket(first + i)).then(
        () => ok++,
        (e) => {
          failed++;
          const key = String(e?.message ?? e).slice(0, 120);
          errors[key] = (errors[key] ?? 0) + 1;
        },
      ),
    );
  }
  await Promise.all(settled);
  return (performance.now() - started) / 1000;
}

process.on("message", async (msg) => {
  if (msg === "go") {
    const seconds = await open();
    process.send({ type: "opened", ok, failed, errors, seconds });
  } else if (msg === "measure") {
    process.send({ type: "memory", memory: memory(), ok, dropped });
  } else if (msg === "exit") {
    process.exit(0);
  }
});
process.on("disconnect", () => process.exit(0));
process.send({ type: "ready", memory: memory() });
