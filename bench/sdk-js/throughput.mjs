// Messages per second one Node process receives and acks with the SDK: qos 1 pushes through the
// HTTP API at increasing fixed rates (sender.mjs, a Node process of its own), to the clients of
// one receiving Node process (receiver.mjs), until it falls behind. A fresh server per series.
//
//   node throughput.mjs     (bench/sdk-js/run.sh throughput sets the environment)
//
// Series: "one" (one client; each request pushes to its user) and "many" (MANY_USERS clients
// in the one process; each request pushes one message to all of them).
// A step falls behind when the messages received in its window are under 95% of its rate, the
// p99 from send to receipt is over 1 s, its messages did not all arrive within 10 s of the
// end, or a client was disconnected. The series stops at the first step that falls behind.
//
// Environment: SERIES ["one many"], MANY_USERS [100], RATES_ONE, RATES_MANY (messages/s, i.e.
// deliveries), WARM_S [2], WINDOW_S [8], CONCURRENCY [32] requests in flight at most, PAYLOAD
// [100] bytes, STORE ['backend = "memory"'] (the [store] section), ROUNDS [2], TETHER_BIN, OUT.

import { fork } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";

import { performance } from "node:perf_hooks";

import { API_KEY, APP, coresBusy, cpuSeconds, here, loadavg, machineTicks, nowMs, Server, sleep } from "./lib.mjs";

const SERIES = (process.env.SERIES ?? "one many").split(/\s+/).filter(Boolean);
const MANY_USERS = Number(process.env.MANY_USERS ?? 100);
const RATES = {
  one: (process.env.RATES_ONE ?? "1000 2000 4000 8000 12000 16000 20000").split(/\s+/).map(Number),
  many: (process.env.RATES_MANY ?? "5000 10000 20000 40000 60000 80000 100000 150000 200000 250000 300000").split(/\s+/).map(Number),
};
const WARM_S = Number(process.env.WARM_S ?? 2);
const WINDOW_S = Number(process.env.WINDOW_S ?? 8);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 32);
const PAYLOAD = Number(process.env.PAYLOAD ?? 100);
const STORE = process.env.STORE ?? 'backend = "memory"';
const ROUNDS = Number(process.env.ROUNDS ?? 2);
const OUT = process.env.OUT ?? join(here, "../results", `sdk-js-throughput-${Date.now()}`);
const CORES = availableParallelism();
mkdirSync(OUT, { recursive: true });

/** A child's next IPC message of `type`, bounded. */
function next(child, type, timeoutMs) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`no ${type} from pid ${child.pid} within ${timeoutMs} ms`)), timeoutMs);
    const on = (msg) => {
      if (msg?.type !== type) return;
      clearTimeout(timer);
      child.off("message", on);
      res(msg);
    };
    child.on("message", on);
  });
}

function ask(child, msg, type, timeoutMs = 30000) {
  const answer = next(child, type, timeoutMs);
  child.send(msg);
  return answer;
}

/** Counters of the server's /metrics that tell what the clients sent. */
async function metrics(server) {
  const text = await (await fetch(`${server.httpUrl}/metrics`, { signal: AbortSignal.timeout(5000) })).text();
  const read = (name) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "m").exec(text)?.[1] ?? 0);
  return { acks: read("tether_acks_total"), framesIn: read('tether_frames_in_total\\{transport="ws"\\}'), backlog: read("tether_backlog_messages_total") };
}

function cpuOf(pid) {
  const c = cpuSeconds(pid);
  return c.user + c.system;
}

async function series(kind, round) {
  const users = kind === "one" ? ["u0"] : Array.from({ length: MANY_USERS }, (_, i) => `u${i}`);
  const server = await Server.start({ store: STORE, gateway: 'shutdown_spread = "100ms"\nshutdown_grace = "2s"' });
  const receiver = fork(join(here, "receiver.mjs"), [JSON.stringify({ url: server.wsUrl, users, heartbeatMs: 30000 })], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const sender = fork(join(here, "sender.mjs"), [JSON.stringify({ http: server.httpAddr, apiKey: API_KEY, app: APP })], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const rows = [];
  try {
    await Promise.all([next(receiver, "ready", 60000), next(sender, "ready", 30000)]);
    let expected = 0;
    for (const [step, rate] of RATES[kind].entries()) {
      const load = loadavg();
      const done = ask(sender, { type: "step", step, rate, users, warmMs: WARM_S * 1000, windowMs: WINDOW_S * 1000, concurrency: CONCURRENCY, payloadBytes: PAYLOAD }, "done", (WARM_S + WINDOW_S) * 1000 + 60000);
      await sleep(WARM_S * 1000);
      const a = {
        r: await ask(receiver, { type: "snapshot" }, "snapshot"),
        m: await metrics(server),
        cpu: [receiver.pid, server.pid, sender.pid].map(cpuOf),
        ticks: machineTicks(),
        t: nowMs(),
      };
      await sleep(WINDOW_S * 1000);
      const b = {
        r: await ask(receiver, { type: "snapshot" }, "snapshot"),
        m: await metrics(server),
        cpu: [receiver.pid, server.pid, sender.pid].map(cpuOf),
        ticks: machineTicks(),
        t: nowMs(),
      };
      const sent = await done;
      expected += sent.ok * users.length;
      // Drain: wait until every accepted message arrived, 10 s at most.
      const drainStart = Date.now();
      let last;
      do {
        last = await ask(receiver, { type: "snapshot" }, "snapshot");
        if (last.received >= expected) break;
        await sleep(100);
      } while (Date.now() - drainStart < 10000);
      const stats = await ask(receiver, { type: "step", step }, "step");
      const seconds = (b.t - a.t) / 1000;
      const received = b.r.received - a.r.received;
      const perS = received / seconds;
      const cores = b.cpu.map((c, i) => (c - a.cpu[i]) / seconds);
      const busy = coresBusy(a.ticks, b.ticks, CORES);
      const elu = performance.eventLoopUtilization(b.r.elu, a.r.elu).utilization;
      const row = {
        kind,
        round,
        step,
        users: users.length,
        load,
        rate,
        acceptedPerS: (sent.okWindow * users.length) / WINDOW_S,
        receivedPerS: perS,
        p50Ms: stats.p50,
        p99Ms: stats.p99,
        maxMs: stats.max,
        apiP50Ms: sent.apiP50,
        apiP99Ms: sent.apiP99,
        failedRequests: sent.failed,
        statuses: sent.statuses,
        senderLateMs: sent.lateMs,
        missing: Math.max(0, expected - last.received),
        duplicates: stats.duplicates,
        disconnects: b.r.disconnects - a.r.disconnects,
        disconnectsTotal: stats.disconnects,
        acksPerS: (b.m.acks - a.m.acks) / seconds,
        framesInPerS: (b.m.framesIn - a.m.framesIn) / seconds,
        backlogResent: b.m.backlog - a.m.backlog,
        nodeCores: cores[0],
        nodeLoopBusy: elu,
        serverCores: cores[1],
        senderCores: cores[2],
        machineCores: busy,
        outsideCores: busy - cores[0] - cores[1] - cores[2],
        nodeUsPerMsg: (cores[0] / perS) * 1e6,
        serverUsPerMsg: (cores[1] / perS) * 1e6,
      };
      row.behind = row.receivedPerS < 0.95 * rate || !(row.p99Ms <= 1000) || row.missing > 0 || row.disconnects > 0 || stats.disconnects > 0;
      rows.push(row);
      console.log(
        `${kind} (${users.length} user${users.length > 1 ? "s" : ""}) round ${round} step ${step}: ${rate} msg/s asked, ${Math.round(row.acceptedPerS)} accepted, ${Math.round(perS)} received/s; p50 ${row.p50Ms.toFixed(1)} p99 ${row.p99Ms.toFixed(1)} ms; CPU node ${row.nodeCores.toFixed(2)} (${row.nodeUsPerMsg.toFixed(1)} µs/msg, event loop ${(100 * elu).toFixed(0)}% busy), server ${row.serverCores.toFixed(2)} (${row.serverUsPerMsg.toFixed(1)} µs/msg), sender ${row.senderCores.toFixed(2)}, outside ${row.outsideCores.toFixed(2)} cores; load ${load.toFixed(2)}; acks ${Math.round(row.acksPerS)}/s; missing ${row.missing}, dup ${row.duplicates}, disconnects ${stats.disconnects}, API p99 ${row.apiP99Ms.toFixed(1)} ms, sender late ${row.senderLateMs.toFixed(0)} ms${row.behind ? "  <- behind" : ""}`,
      );
      if (row.behind) break;
    }
  } finally {
    receiver.send({ type: "exit" });
    sender.send({ type: "exit" });
    await Promise.all([receiver, sender].map((c) => (c.exitCode === null ? new Promise((r) => c.once("exit", r)) : null)));
    await server.stop();
  }
  return rows;
}

const all = [];
console.log(`throughput: series ${SERIES.join(", ")}, ${WARM_S} s warm-up + ${WINDOW_S} s per step, ${PAYLOAD} B payloads, at most ${CONCURRENCY} requests in flight, store: ${STORE}, nproc ${CORES}`);
for (let round = 0; round < ROUNDS; round++) {
  // The series alternate, the first one flipping each round.
  const order = round % 2 === 0 ? SERIES : [...SERIES].reverse();
  for (const kind of order) all.push(...(await series(kind, round)));
}
writeFileSync(join(OUT, "throughput.json"), JSON.stringify(all, null, 2));
