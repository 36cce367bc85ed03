/** Reconnects, resume without loss or duplicates, the store, heartbeats, codes that stop. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { MemoryStore, TetherClient } from "../src/index.js";
import { APP, Collector, haveServer, options, recordingWebSocket, Server, WAIT_MS, within } from "./server.js";

test("after a server restart the client reconnects and resumes durable pushes without loss or duplicates", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const wire = recordingWebSocket();
  const client = new TetherClient(options(server, "alice", { WebSocket: wire.WebSocket }));
  t.after(() => client.close());
  const messages = new Collector(client, "message");
  const disconnects = new Collector(client, "disconnected");
  const connects = new Collector(client, "connected");
  const states = new Collector(client, "state");
  const stateHeard: string[] = [];
  client.on("disconnected", () => stateHeard.push(client.state));
  await within(client.connect(), WAIT_MS, "connect");

  await server.push(["alice"], { n: 1 }, 1);
  await server.push(["alice"], { n: 2 }, 1);
  await messages.count(2, "pushes");
  client.ack(APP, 1); // #2 is handed over but not acked: the server would resend it.

  await server.restart();
  await connects.count(2, "a reconnect", 2 * WAIT_MS);
  const lost = disconnects.seen[0]!;
  assert.equal(lost.code, 4100, `shutdown closes with 4100: ${JSON.stringify(lost)}`);
  assert.equal(lost.reconnecting, true);
  assert.equal(lost.error.willReconnect, true);
  assert.deepEqual(
    states.seen.map((s) => s.state),
    ["connecting", "connected", "reconnecting", "connected"],
  );
  // One event for the close, and one per failed attempt while the node was coming back.
  assert.ok(stateHeard.length >= 1 && stateHeard.every((s) => s === "reconnecting"), JSON.stringify(stateHeard));

  await server.push(["alice"], { n: 3 }, 1);
  await messages.count(3, "pushes");
  // Nothing more arrives: #2 is not resent (last_seq 2 on the reconnect).
  await server.push(["alice"], { n: 4 }, 0);
  await messages.count(4, "pushes");
  assert.deepEqual(
    messages.seen.map((m) => m.seq),
    [1, 2, 3, 0],
  );
  const connects2 = wire.sent.filter((f) => f.op === "connect");
  assert.equal(connects2.length, 2);
  assert.equal(connects2[0].bindings[0].last_seq, undefined, "a new client leaves the position to the server");
  assert.equal(connects2[1].bindings[0].last_seq, 2, "the reconnect resumes after the last seq handed over");
  assert.deepEqual(
    wire.sent.filter((f) => f.op === "ack").map((f) => [f.app, f.seq]),
    [[APP, 1]],
  );
});

test("a backlog that arrives right behind connected is handed over whole, to listeners added before connect()", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  for (let n = 1; n <= 20; n++) await server.push(["carol"], { n }, 1);
  const client = new TetherClient(options(server, "carol"));
  t.after(() => client.close());
  const messages = new Collector(client, "message");
  await within(client.connect(), WAIT_MS, "connect");
  await messages.count(20, "the backlog");
  assert.deepEqual(
    messages.seen.map((m) => m.seq),
    Array.from({ length: 20 }, (_, i) => i + 1),
  );
  await assert.rejects(client.connect(), /called already/);
});

test("a client with the same store resumes after the last seq the application acked", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const store = new MemoryStore();

  // First "page load": two pushes, only the first acked before closing.
  const first = new TetherClient(options(server, "alice", { store }));
  const firstMessages = new Collector(first, "message");
  await within(first.connect(), WAIT_MS, "connect");
  await server.push(["alice"], { n: 1 }, 1);
  await server.push(["alice"], { n: 2 }, 1);
  await firstMessages.count(2, "pushes");
  first.ack(APP, 1);
  await new Promise((r) => setTimeout(r, 50));
  first.close();
  assert.equal(first.state, "closed");

  // Second: the same device (kept in the store) gets what was not acked.
  const second = new TetherClient(options(server, "alice", { store }));
  t.after(() => second.close());
  const secondMessages = new Collector(second, "message");
  await within(second.connect(), WAIT_MS, "connect");
  assert.equal(second.deviceId, first.deviceId, "the generated device id is kept in the store");
  await secondMessages.count(1, "the unacked push");
  await server.push(["alice"], { n: 3 }, 1);
  await secondMessages.count(2, "pushes");
  assert.deepEqual(
    secondMessages.seen.map((m) => m.seq),
    [2, 3],
  );
});

test("the store's seq is sent as last_seq: a new device resumes after it instead of from the start", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  for (let n = 1; n <= 3; n++) await server.push(["bob"], { n }, 1);
  const store = new MemoryStore();
  store.set("seq/demo/bob", "2");
  const wire = recordingWebSocket();
  const client = new TetherClient(options(server, "bob", { store, device: "fresh-device", WebSocket: wire.WebSocket }));
  t.after(() => client.close());
  const messages = new Collector(client, "message");
  await within(client.connect(), WAIT_MS, "connect");
  assert.equal(wire.sent[0]!.bindings[0].last_seq, 2);
  await messages.count(1, "the push after seq 2");
  await server.push(["bob"], "live", 0);
  await messages.count(2, "pushes");
  assert.deepEqual(
    messages.seen.map((m) => m.seq),
    [3, 0],
  );
});

test("heartbeats keep a quiet connection up, and a silent server is detected within two intervals of a ping", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const client = new TetherClient(options(server, "alice", { heartbeatMs: 300, connectTimeoutMs: 1000 }));
  t.after(() => client.close());
  const disconnects = new Collector(client, "disconnected");
  const connects = new Collector(client, "connected");
  await within(client.connect(), WAIT_MS, "connect");

  // The server drops a client silent for 3 intervals (900 ms): pings must keep this one.
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(disconnects.seen.length, 0, `a pinging client stays connected: ${JSON.stringify(disconnects.seen)}`);

  const paused = Date.now();
  server.pause(true);
  await disconnects.count(1, "a heartbeat timeout");
  const detectedAfter = Date.now() - paused;
  server.pause(false);
  assert.match(disconnects.seen[0]!.reason, /no frame from the server within 600 ms of a ping/);
  assert.equal(disconnects.seen[0]!.code, undefined);
  assert.ok(detectedAfter < 2000, `detected after ${detectedAfter} ms`);
  await connects.count(2, "a reconnect", 2 * WAIT_MS);
  assert.equal(client.state, "connected");
});

test("a kicked client (4207) does not reconnect: the last event says so and the state is closed", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const client = new TetherClient(options(server, "alice"));
  t.after(() => client.close());
  const disconnects = new Collector(client, "disconnected");
  let stateHeard = "";
  client.on("disconnected", () => (stateHeard = client.state));
  await within(client.connect(), WAIT_MS, "connect");
  const res = await server.api("POST", `/v1/apps/${APP}/users/alice/kick`);
  assert.equal(res.status, 200);
  await disconnects.count(1, "the kick");
  const last = disconnects.seen[0]!;
  assert.equal(last.code, 4207);
  assert.equal(last.reconnecting, false);
  assert.match(last.error.message, /code 4207, the client does not reconnect/);
  assert.equal(client.state, "closed");
  assert.equal(stateHeard, "closed", "listeners hear of the end in the state it leaves");
  await assert.rejects(client.upstream(APP, "chat", {}), (e: Error & { kind?: string }) => e.kind === "closed");
});

test("after a shutdown the client waits at least the server's retry_after_ms before reconnecting", async (t) => {
  if (!haveServer(t)) return;
  // Clients are told to come back at a random point within 2 s.
  const server = await Server.start({ gateway: 'shutdown_spread = "2s"' });
  t.after(() => server.stop());
  const wire = recordingWebSocket();
  // Without the server's word, the backoff alone would retry within 50 ms.
  const client = new TetherClient(options(server, "alice", { WebSocket: wire.WebSocket, reconnect: { initialMs: 50, maxMs: 50 } }));
  t.after(() => client.close());
  const disconnects = new Collector(client, "disconnected");
  const connects = new Collector(client, "connected");
  let lostAt = 0;
  client.once("disconnected", () => (lostAt = Date.now()));
  await within(client.connect(), WAIT_MS, "connect");

  await server.restart();
  await connects.count(2, "a reconnect", 2 * WAIT_MS);
  const retryAfter = disconnects.seen[0]!.error.retryAfterMs;
  assert.equal(disconnects.seen[0]!.code, 4100);
  const waited = wire.opened[1]! - lostAt;
  assert.ok(waited >= retryAfter - 5, `reconnected after ${waited} ms, retry_after_ms was ${retryAfter}`);
  assert.ok(waited < retryAfter + 1000, `reconnected after ${waited} ms, retry_after_ms was ${retryAfter}`);
});
