// What an idle SDK client holds on Node's heap, by constructor: heap snapshots of this process
// before and after connecting CLIENTS clients (and, for comparison, as many bare `ws` sockets),
// the growth divided by the clients.
//
//   node heap.mjs          (bench/sdk-js/run.sh heap)
//
// Environment: CLIENTS [1000], TOP [15] rows, TETHER_BIN.

import { getHeapSnapshot } from "node:v8";
import WebSocket from "ws";

import { APP, SDK, Server, token } from "./lib.mjs";

const { TetherClient } = await import(SDK);
const CLIENTS = Number(process.env.CLIENTS ?? 1000);
const TOP = Number(process.env.TOP ?? 15);

/** Self sizes and counts of a heap snapshot, by node type and name. */
async function byName() {
  const chunks = [];
  for await (const chunk of getHeapSnapshot()) chunks.push(chunk);
  const snap = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const [typeAt, nameAt, sizeAt] = ["type", "name", "self_size"].map((f) => fields.indexOf(f));
  const sizes = new Map();
  for (let i = 0; i < snap.nodes.length; i += fields.length) {
    const type = types[snap.nodes[i + typeAt]];
    // Strings and code are named by their content; group them by type.
    const name = type === "object" || type === "closure" || type === "native" ? `${type} ${snap.strings[snap.nodes[i + nameAt]]}` : type;
    const e = sizes.get(name) ?? { bytes: 0, count: 0 };
    e.bytes += snap.nodes[i + sizeAt];
    e.count += 1;
    sizes.set(name, e);
  }
  return sizes;
}

function growth(before, after, n) {
  const rows = [];
  for (const [name, a] of after) {
    const b = before.get(name) ?? { bytes: 0, count: 0 };
    if (a.bytes > b.bytes) rows.push({ name, bytes: (a.bytes - b.bytes) / n, count: (a.count - b.count) / n });
  }
  rows.sort((x, y) => y.bytes - x.bytes);
  return { total: rows.reduce((s, r) => s + r.bytes, 0), rows };
}

function print(what, g) {
  console.log(`\n${what}: ${Math.round(g.total)} bytes of heap per connection (growth of self sizes)`);
  console.log("| bytes | objects | what |\n|---|---|---|");
  for (const r of g.rows.slice(0, TOP)) console.log(`| ${Math.round(r.bytes)} | ${r.count.toFixed(2)} | ${r.name} |`);
}

async function connectAll(make) {
  const opened = [];
  for (let i = 0; i < CLIENTS; i += 100) {
    const batch = [];
    for (let j = i; j < Math.min(CLIENTS, i + 100); j++) batch.push(make(j));
    opened.push(...(await Promise.all(batch)));
  }
  return opened;
}

const server = await Server.start({ gateway: 'shutdown_spread = "100ms"\nshutdown_grace = "2s"' });
try {
  // A first client of each kind, so that module-level state and code exist in both snapshots.
  const warm = new TetherClient({ url: server.wsUrl, bindings: [{ app: APP, token: token("warm") }], WebSocket });
  await warm.connect();

  let before = await byName();
  const clients = await connectAll(async (n) => {
    const c = new TetherClient({ url: server.wsUrl, bindings: [{ app: APP, token: token(`u${n}`) }], WebSocket, heartbeatMs: 60000 });
    await c.connect();
    return c;
  });
  print(`${CLIENTS} SDK clients (TetherClient over ws)`, growth(before, await byName(), CLIENTS));
  for (const c of clients) c.close();
  await new Promise((r) => setTimeout(r, 500));

  before = await byName();
  const sockets = await connectAll(
    (n) =>
      new Promise((res, rej) => {
        const ws = new WebSocket(server.wsUrl);
        ws.on("open", () => ws.send(JSON.stringify({ op: "connect", id: 1, version: 1, device: `json-${n}`, heartbeat_ms: 60000, bindings: [{ app: APP, token: token(`v${n}`) }] })));
        ws.once("message", () => res(ws));
        ws.on("error", rej);
      }),
  );
  print(`${CLIENTS} bare ws sockets after the JSON connect`, growth(before, await byName(), CLIENTS));
  for (const s of sockets) s.close();
  warm.close();
} finally {
  await server.stop();
}
process.exit(0);
