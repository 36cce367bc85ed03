// The SDK's reconnect time after a server restart: CLIENTS TetherClients (over PROCS Node
// processes) connected to one node, the node restarted on the same ports and data directory,
// and for each client the time from the new node's start line (listening and accepting) to
// its `connected` again. A fresh server each round.
//
//   node reconnect.mjs     (bench/sdk-js/run.sh reconnect sets the environment)
//
// Modes, alternating round by round:
// - graceful: SIGTERM. The node closes every connection with 4100 over `shutdown_spread` (5 s
//   by default), each with a random `retry_after_ms` within it, exits, and starts again.
// - crash: SIGKILL, and the node starts again at once; the clients see the socket drop (1006).
// Each mode runs twice per round: through the dispatcher (the clients find the node through
// `/v1/dispatch` and use the backoff it announces, `[dispatch]`: 500 ms, 30 s, full jitter by
// default) and with `url` alone (the SDK's own defaults, the same numbers).
//
// Environment: CLIENTS [1000], PROCS [2], RATE [500] connects/s, ROUNDS [2], MODES
// ["graceful crash"], DISPATCH ["1 0"] (1: through the dispatcher, 0: url only), SETTLE_S [3]
// seconds connected before the restart, GATEWAY [] extra TOML of [gateway], TETHER_BIN, OUT.

import { fork } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";

import { cpuSeconds, here, loadavg, nowMs, quantile, Server, sleep } from "./lib.mjs";

const CLIENTS = Number(process.env.CLIENTS ?? 1000);
const PROCS = Number(process.env.PROCS ?? 2);
const RATE = Number(process.env.RATE ?? 500);
const ROUNDS = Number(process.env.ROUNDS ?? 2);
const MODES = (process.env.MODES ?? "graceful crash").split(/\s+/).filter(Boolean);
const DISPATCH = (process.env.DISPATCH ?? "1 0").split(/\s+/).filter(Boolean).map((d) => d === "1");
const VARIANTS = MODES.flatMap((mode) => DISPATCH.map((dispatch) => ({ mode, dispatch })));
const SETTLE_S = Number(process.env.SETTLE_S ?? 3);
const GATEWAY = process.env.GATEWAY ?? "";
const OUT = process.env.OUT ?? join(here, "../results", `sdk-js-reconnect-${Date.now()}`);
mkdirSync(OUT, { recursive: true });

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

const askAll = (children, msg, type, timeoutMs = 30000) =>
  Promise.all(
    children.map((c) => {
      const answer = next(c, type, timeoutMs);
      c.send(msg);
      return answer;
    }),
  );

/** What one client's timeline says about its reconnect, all times relative to `back`. */
function analyse(line, term, back) {
  const close = line.disconnected.find((d) => d[0] >= term);
  if (!close) return undefined;
  const reconnected = line.connected.find((t) => t > close[0]);
  if (reconnected === undefined) return { lost: true };
  const socket = line.sockets.filter((t) => t <= reconnected).at(-1);
  const asked = line.dispatches.filter((d) => d[0] >= close[0] && d[0] <= socket).at(-1);
  // The successful round began when it asked the dispatcher (or opened its socket without one).
  const round = asked ? asked[0] : socket;
  return {
    reconnectMs: reconnected - back,
    // Waiting for its backoff delay after the node was back, then the round's own work
    // (dispatcher request, WebSocket upgrade, `connect`/`connected`).
    waitMs: Math.max(0, round - back),
    workMs: reconnected - Math.max(round, back),
    // The earliest the server's retry_after_ms allowed it, after the node was back.
    floorMs: Math.max(0, close[0] + close[2] - back),
    closedMs: close[0] - back,
    failedRounds: line.disconnected.filter((d) => d[0] > close[0] && d[0] < reconnected).length,
    // Dispatcher answers of 503 (`no_endpoints`) once the node was back: each costs a round.
    refusedAfterBack: line.dispatches.filter((d) => d[0] >= back && d[0] < reconnected && d[2] === 503).length,
    socketsPerRound: line.sockets.filter((t) => t > close[0] && t <= reconnected).length / (line.disconnected.filter((d) => d[0] > close[0] && d[0] < reconnected).length + 1),
    code: close[1],
  };
}

function summary(values) {
  return { p50: quantile(values, 0.5), p90: quantile(values, 0.9), p99: quantile(values, 0.99), max: quantile(values, 1) };
}

async function round({ mode, dispatch }, r) {
  const server = await Server.start({ store: 'backend = "embedded"', gateway: GATEWAY });
  const children = [];
  try {
    const per = Math.ceil(CLIENTS / PROCS);
    for (let first = 0; first < CLIENTS; first += per) {
      const count = Math.min(per, CLIENTS - first);
      const arg = { url: server.wsUrl, dispatch: dispatch ? `${server.httpUrl}/v1/dispatch` : undefined, first, count, rate: RATE / PROCS };
      children.push(fork(join(here, "reconnect-client.mjs"), [JSON.stringify(arg)], { stdio: ["ignore", "inherit", "inherit", "ipc"] }));
    }
    const opened = await Promise.all(children.map((c) => next(c, "opened", CLIENTS * 20 + 60000)));
    const ok = opened.reduce((a, o) => a + o.ok, 0);
    if (ok !== CLIENTS) throw new Error(`only ${ok} of ${CLIENTS} clients connected`);
    await sleep(SETTLE_S * 1000);
    const load = loadavg();
    const term = nowMs();
    const cpuAt = () => children.map((c) => cpuSeconds(c.pid)).reduce((a, c) => a + c.user + c.system, 0);
    await server.restart(mode === "crash" ? "SIGKILL" : "SIGTERM");
    const back = server.startedAt;
    const nodeCpuBack = cpuAt();
    const deadline = Date.now() + 120000;
    let counts;
    do {
      await sleep(500);
      counts = await askAll(children, "count", "count");
    } while (counts.reduce((a, c) => a + c.reconnected, 0) < CLIENTS && Date.now() < deadline);
    // CPU from the node's start to the last client's `connected` (the count polls are in it).
    const nodeCpu = cpuAt() - nodeCpuBack;
    const serverCpu = cpuSeconds(server.pid);
    const reports = await askAll(children, "report", "report");
    const lines = reports.flatMap((rep) => rep.timelines);
    const analysed = lines.map((l) => analyse(l, term, back)).filter(Boolean);
    const done = analysed.filter((a) => !a.lost);
    const byRounds = {};
    for (const a of done) byRounds[a.failedRounds] = (byRounds[a.failedRounds] ?? 0) + 1;
    const refused = {};
    for (const a of done) refused[a.refusedAfterBack] = (refused[a.refusedAfterBack] ?? 0) + 1;
    const lastMs = quantile(done.map((a) => a.reconnectMs), 1);
    const result = {
      mode,
      round: r,
      dispatch,
      load,
      clients: CLIENTS,
      closed: analysed.length,
      reconnected: done.length,
      downMs: back - term,
      exitMs: server.stoppedAt - term,
      codes: [...new Set(done.map((a) => a.code))],
      reconnect: summary(done.map((a) => a.reconnectMs)),
      wait: summary(done.map((a) => a.waitMs)),
      work: summary(done.map((a) => a.workMs)),
      floor: summary(done.map((a) => a.floorMs)),
      closedAfterBack: summary(done.map((a) => a.closedMs)),
      failedRounds: byRounds,
      refusedAfterBack: refused,
      socketsPerRound: summary(done.map((a) => a.socketsPerRound)),
      // Cores busy from the node's start to the last reconnect (the Node processes' over the
      // time until the polling saw it, up to 500 ms more).
      nodeCores: nodeCpu / (Math.max(lastMs, 1) / 1000),
      serverCores: (serverCpu.user + serverCpu.system) / (Math.max(lastMs, 1) / 1000),
      nodeCpuS: nodeCpu,
      serverCpuS: serverCpu.user + serverCpu.system,
    };
    writeFileSync(join(OUT, `${mode}-${dispatch ? "dispatch" : "url"}-${r}.json`), JSON.stringify({ result, lines, term, back }, null, 1));
    return result;
  } finally {
    for (const c of children) if (c.exitCode === null) c.send("exit");
    await Promise.all(children.map((c) => (c.exitCode === null ? new Promise((res) => c.once("exit", res)) : null)));
    await server.stop();
  }
}

const fmt = (s) => `p50 ${Math.round(s.p50)} / p90 ${Math.round(s.p90)} / p99 ${Math.round(s.p99)} / max ${Math.round(s.max)}`;
console.log(`reconnect: ${CLIENTS} clients in ${PROCS} Node processes, ${VARIANTS.map((v) => `${v.mode}/${v.dispatch ? "dispatch" : "url"}`).join(", ")} in turn, ${ROUNDS} rounds, nproc ${availableParallelism()}`);
const results = [];
for (let r = 0; r < ROUNDS; r++) {
  // The order turns every round.
  const order = VARIANTS.map((_, i) => VARIANTS[(i + r) % VARIANTS.length]);
  for (const variant of order) {
    const x = await round(variant, r);
    results.push(x);
    console.log(
      `${x.mode}/${x.dispatch ? "dispatch" : "url"} round ${r}: load ${x.load.toFixed(2)}; node down ${Math.round(x.downMs)} ms (exited after ${Math.round(x.exitMs)}); ${x.reconnected} of ${x.closed} reconnected (codes ${x.codes.join(",")}); ms after the node was back: reconnect ${fmt(x.reconnect)}; of it waiting ${fmt(x.wait)}, the round's work ${fmt(x.work)}; retry_after floor ${fmt(x.floor)}; failed rounds before ${JSON.stringify(x.failedRounds)}; 503 answers after the node was back ${JSON.stringify(x.refusedAfterBack)}; CPU until the last reconnect: Node ${x.nodeCpuS.toFixed(2)} s, server ${x.serverCpuS.toFixed(2)} s`,
    );
  }
}
writeFileSync(join(OUT, "reconnect.json"), JSON.stringify(results, null, 2));
