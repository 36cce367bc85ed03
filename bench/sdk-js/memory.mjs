// Idle memory per WebSocket connection, a fresh server for each run, in turn:
// - raw:  the load generator's WebSocket connections (`tether-bench connections --transport ws`:
//         tether's binary frames inside WebSocket, one small Rust task each);
// - json: bare `ws` sockets from Node sending the JSON `connect` (the SDK's wire, no SDK);
// - sdk:  TetherClients of @tether/client (sdk/js/dist) over `ws`.
// The server's RSS growth per connection for each; for Node, its own memory per client.
//
//   node memory.mjs        (bench/sdk-js/run.sh memory sets the environment)
//
// Environment: COUNT [10000] connections, PROCS [4] Node processes sharing them, RATES
// ["1000 250"] handshakes started per second (all kinds; each rate its own rounds), HOLD [10]
// seconds held before the reading, PAIRS [3] rounds per rate (the order turns each round),
// KINDS ["raw json sdk"], HEARTBEAT_S [60] (proposed by all), TETHER_BIN, TETHER_BENCH, OUT (a
// directory for each run's JSON).

import { fork, spawn } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";

import { coresBusy, cpuSeconds, here, loadavg, machineTicks, pssBytes, rssBytes, SECRET, Server, sleep } from "./lib.mjs";

const COUNT = Number(process.env.COUNT ?? 10000);
const PROCS = Number(process.env.PROCS ?? 4);
const RATES = (process.env.RATES ?? "1000 250").split(/\s+/).filter(Boolean).map(Number);
const HOLD = Number(process.env.HOLD ?? 10);
const PAIRS = Number(process.env.PAIRS ?? 3);
const HEARTBEAT_S = Number(process.env.HEARTBEAT_S ?? 60);
const BENCH = process.env.TETHER_BENCH ?? join(here, "../../target/release/tether-bench");
const OUT = process.env.OUT ?? join(here, "../results", `sdk-js-memory-${Date.now()}`);
const CORES = availableParallelism();
mkdirSync(OUT, { recursive: true });

// Memory runs need no drain: the server closes its connections within 100 ms.
const serverOptions = { gateway: 'shutdown_spread = "100ms"\nshutdown_grace = "2s"' };

/** One child's next IPC message of `type`, bounded. */
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
    child.once("exit", (code) => rej(new Error(`holder ${child.pid} exited with ${code}`)));
  });
}

async function nodeRun(mode, rate, run) {
  const server = await Server.start(serverOptions);
  const load = loadavg();
  const holders = [];
  try {
    const per = Math.ceil(COUNT / PROCS);
    for (let p = 0, first = 0; first < COUNT; p++, first += per) {
      const count = Math.min(per, COUNT - first);
      const arg = JSON.stringify({ mode, url: server.wsUrl, first, count, rate: rate / PROCS, heartbeatMs: HEARTBEAT_S * 1000 });
      holders.push(fork(join(here, "holder.mjs"), [arg], { execArgv: ["--expose-gc"], stdio: ["ignore", "inherit", "inherit", "ipc"] }));
    }
    const ready = await Promise.all(holders.map((h) => next(h, "ready", 30000)));
    await sleep(1000);
    const rss0 = rssBytes(server.pid);
    const pss0 = pssBytes(server.pid);
    const cpu0 = cpuSeconds(server.pid);
    const opened = Promise.all(holders.map((h) => next(h, "opened", COUNT * 10 + 120000)));
    for (const h of holders) h.send("go");
    const open = await opened;
    const cpu1 = cpuSeconds(server.pid);
    const ticks0 = machineTicks();
    await sleep(HOLD * 1000);
    const busy = coresBusy(ticks0, machineTicks(), CORES);
    const rss1 = rssBytes(server.pid);
    const pss1 = pssBytes(server.pid);
    const measured = holders.map((h) => next(h, "memory", 30000));
    for (const h of holders) h.send("measure");
    const after = await Promise.all(measured);
    const connected = open.reduce((a, o) => a + o.ok, 0);
    const sum = (f) => after.reduce((a, m, i) => a + f(m.memory) - f(ready[i].memory), 0);
    const result = {
      kind: mode,
      rate,
      run,
      load,
      connected,
      failed: open.reduce((a, o) => a + o.failed, 0),
      errors: open.map((o) => o.errors),
      dropped: after.reduce((a, m) => a + m.dropped, 0),
      connectSeconds: Math.max(...open.map((o) => o.seconds)),
      serverCpuPerHandshakeUs: ((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / connected) * 1e6,
      serverRssKib: [rss0 / 1024, rss1 / 1024],
      serverRssPerConn: (rss1 - rss0) / connected,
      serverPssPerConn: (pss1 - pss0) / connected,
      nodeProcesses: holders.length,
      nodeRssPerClient: sum((m) => m.rss) / connected,
      nodeHeapPerClient: sum((m) => m.heapUsed) / connected,
      nodeExternalPerClient: sum((m) => m.external) / connected,
      nodeRssAfterKib: after.map((m) => Math.round(m.memory.rss / 1024)),
      holdCoresBusy: busy,
    };
    return result;
  } finally {
    for (const h of holders) if (h.exitCode === null) h.send("exit");
    await Promise.all(holders.map((h) => (h.exitCode === null ? new Promise((r) => h.once("exit", r)) : null)));
    await server.stop();
  }
}

async function rawRun(rate, run) {
  const server = await Server.start(serverOptions);
  const load = loadavg();
  const json = join(OUT, `raw-${rate}-${run}.json`);
  try {
    await sleep(1000);
    const args = ["connections", "--transport", "ws", "--addr", server.wsAddr, "--http", server.httpAddr, "--count", String(COUNT), "--rate", String(rate), "--hold", String(HOLD), "--heartbeat", String(HEARTBEAT_S), "--secret", SECRET, "--server-pid", String(server.pid), "--json", json];
    const child = spawn(BENCH, args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (c) => (stderr = (stderr + c).slice(-4000)));
    const code = await new Promise((r) => child.once("exit", r));
    if (code !== 0) throw new Error(`tether-bench exited with ${code}:\n${stderr}`);
    const r = JSON.parse(readFileSync(json, "utf8"));
    return {
      kind: "raw",
      rate,
      run,
      load,
      connected: r.connected,
      failed: r.requested - r.connected,
      dropped: r.dropped,
      handshakesPerS: r.handshakes_per_s,
      serverCpuPerHandshakeUs: (r.server_cpu_connect_s / r.connected) * 1e6,
      serverRssKib: [r.server_rss_kib_before, r.server_rss_kib_after],
      serverRssPerConn: r.server_rss_bytes_per_connection,
      serverPssPerConn: r.server_pss_bytes_per_connection,
      clientRssPerConn: r.client_rss_bytes_per_connection,
    };
  } finally {
    await server.stop();
  }
}

const KINDS = (process.env.KINDS ?? "raw json sdk").split(/\s+/).filter(Boolean);
const runs = { raw: rawRun, json: (rate, run) => nodeRun("json", rate, run), sdk: (rate, run) => nodeRun("sdk", rate, run) };
const results = [];
console.log(`memory: ${COUNT} connections at ${RATES.join(" and ")}/s, held ${HOLD} s, Node clients in ${PROCS} processes, ${KINDS.join(", ")} in turn, ${PAIRS} rounds per rate, nproc ${CORES}`);
for (const rate of RATES) for (let pair = 0; pair < PAIRS; pair++) {
  // The order turns every round, so that no kind always runs first (or right after another).
  const order = KINDS.map((_, i) => KINDS[(i + pair) % KINDS.length]);
  for (const kind of order) {
    const r = await runs[kind](rate, pair);
    results.push(r);
    writeFileSync(join(OUT, `${r.kind}-${rate}-${pair}.summary.json`), JSON.stringify(r, null, 2));
    const node = r.kind !== "raw" ? `, Node ${Math.round(r.nodeRssPerClient)} B RSS / ${Math.round(r.nodeHeapPerClient)} B heap per client` : `, load generator ${Math.round(r.clientRssPerConn)} B RSS per connection`;
    console.log(
      `${rate}/s round ${pair} ${r.kind.padEnd(4)}: load ${r.load.toFixed(2)}, ${r.connected} connected (${r.failed} failed, ${r.dropped} dropped), server RSS ${r.serverRssKib.map((k) => Math.round(k)).join(" -> ")} KiB, ${Math.round(r.serverRssPerConn)} B per connection (PSS ${Math.round(r.serverPssPerConn)}), ${r.serverCpuPerHandshakeUs.toFixed(0)} µs server CPU per handshake${node}`,
    );
  }
}
writeFileSync(join(OUT, "memory.json"), JSON.stringify(results, null, 2));
