// SDK clients for reconnect.mjs (forked): `count` TetherClients of users u<first>.., opened at
// `rate` per second, each with a WebSocket class and a fetch that record when the client opened
// a socket or asked the dispatcher. Its argument: {url, dispatch, first, count, rate}. Over IPC:
// "opened" once every connect() settled; on "count" how many are connected and how many have
// connected more than once; on "report" every client's timeline (ms, wall clock); "exit"
// closes them.

import WebSocket from "ws";

import { APP, nowMs, SDK, sleep, token } from "./lib.mjs";

const { TetherClient } = await import(SDK);
const { url, dispatch, first, count, rate } = JSON.parse(process.argv[2]);

/** Per client: sockets opened, dispatcher requests, `connected` and `disconnected` events. */
const timelines = [];
const clients = [];

function recording(line) {
  return class extends WebSocket {
    constructor(...args) {
      line.sockets.push(nowMs());
      super(...args);
    }
  };
}

function recordingFetch(line) {
  return async (input, init) => {
    const asked = nowMs();
    try {
      const res = await fetch(input, init);
      line.dispatches.push([asked, nowMs(), res.status]);
      return res;
    } catch (e) {
      line.dispatches.push([asked, nowMs(), 0]);
      throw e;
    }
  };
}

let ok = 0;
let failed = 0;
const started = performance.now();
const settled = [];
for (let i = 0; i < count; i++) {
  const wait = started + (i * 1000) / rate - performance.now();
  if (wait > 1) await sleep(wait);
  const line = { user: `u${first + i}`, sockets: [], dispatches: [], connected: [], disconnected: [] };
  timelines.push(line);
  const client = new TetherClient({
    url,
    dispatch,
    bindings: [{ app: APP, token: token(line.user) }],
    WebSocket: recording(line),
    fetch: recordingFetch(line),
    connectTimeoutMs: 10000,
  });
  client.on("connected", () => line.connected.push(nowMs()));
  client.on("disconnected", (d) => line.disconnected.push([nowMs(), d.code ?? 0, d.error.retryAfterMs ?? 0, d.reconnecting]));
  clients.push(client);
  settled.push(client.connect().then(() => ok++, () => failed++));
}
await Promise.all(settled);
process.send({ type: "opened", ok, failed });

process.on("message", (msg) => {
  if (msg === "count") {
    process.send({ type: "count", connected: clients.filter((c) => c.state === "connected").length, reconnected: timelines.filter((l) => l.connected.length >= 2).length });
  } else if (msg === "report") {
    process.send({ type: "report", timelines, connected: clients.filter((c) => c.state === "connected").length });
  } else if (msg === "exit") {
    for (const c of clients) c.close();
    setTimeout(() => process.exit(0), 200);
  }
});
process.on("disconnect", () => process.exit(0));
