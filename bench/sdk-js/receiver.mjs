// The Node process under test in throughput.mjs (forked): one TetherClient per user, all in
// this process, each acking every durable push as it arrives (the SDK sends one cumulative ack
// per burst). Its argument: {url, users, heartbeatMs}. Over IPC: "ready" once every client is
// connected; on {type: "snapshot"} the count received so far and the event loop's use; on
// {type: "step", step} the
// latencies of that step's window messages, and the counts of duplicates and disconnects.
//
// A push's payload is {t, n, s, pad} from sender.mjs: `t` the send time (ms, wall clock), `n`
// a number unique per step, `s` = 2 * step + 1 for a message sent in the step's window (2 *
// step in its warm-up).

import WebSocket from "ws";

import { APP, nowMs, quantile, SDK, token } from "./lib.mjs";

const { TetherClient } = await import(SDK);
const { url, users, heartbeatMs } = JSON.parse(process.argv[2]);

let received = 0;
let disconnects = 0;
let duplicates = 0;
/** Per step: latencies (ms) of window messages, and the numbers seen per user (a byte each). */
const steps = new Map();

function stepOf(s) {
  const step = s >> 1;
  let st = steps.get(step);
  if (!st) {
    st = { latencies: [], seen: users.map(() => new Uint8Array(1 << 12)), window: 0 };
    steps.set(step, st);
  }
  return st;
}

const clients = users.map((user, i) => {
  const client = new TetherClient({
    url,
    bindings: [{ app: APP, token: token(user) }],
    WebSocket,
    heartbeatMs,
    connectTimeoutMs: 30000,
  });
  client.on("message", (push) => {
    received++;
    const now = nowMs();
    const p = push.payload.kind === "json" ? push.payload.value : undefined;
    if (p && typeof p.s === "number") {
      const st = stepOf(p.s);
      let seen = st.seen[i];
      if (p.n >= seen.length) {
        const grown = new Uint8Array(Math.max(seen.length * 2, p.n + 1));
        grown.set(seen);
        st.seen[i] = seen = grown;
      }
      if (seen[p.n]) duplicates++;
      else seen[p.n] = 1;
      if (p.s & 1) {
        st.window++;
        st.latencies.push(now - p.t);
      }
    }
    client.ack(push.app, push.seq);
  });
  client.on("disconnected", () => disconnects++);
  return client;
});

await Promise.all(clients.map((c) => c.connect()));

process.on("message", (msg) => {
  if (msg.type === "snapshot") {
    // Event-loop utilization: the share of time the one JavaScript thread was busy.
    process.send({ type: "snapshot", received, disconnects, duplicates, elu: performance.eventLoopUtilization() });
  } else if (msg.type === "step") {
    const st = steps.get(msg.step) ?? { latencies: [], window: 0 };
    const l = st.latencies;
    process.send({
      type: "step",
      windowReceived: st.window,
      p50: quantile(l, 0.5),
      p99: quantile(l, 0.99),
      max: quantile(l, 1),
      received,
      disconnects,
      duplicates,
    });
    steps.delete(msg.step);
  } else if (msg.type === "exit") {
    for (const c of clients) c.close();
    setTimeout(() => process.exit(0), 200);
  }
});
process.on("disconnect", () => process.exit(0));
process.send({ type: "ready" });
