/** Upstream with replies (a real webhook on node:http), sync, and what a lost connection does to them. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { TetherClient, TetherError } from "../src/index.js";
import { APP, Collector, haveServer, OTHER_APP, OTHER_SECRET, options, recordingWebSocket, Server, token, WAIT_MS, webhook, within } from "./server.js";

test("an upstream resolves to the webhook's status and body; a refusal and a missing webhook are told apart", async (t) => {
  if (!haveServer(t)) return;
  const hook = await webhook(t);
  const server = await Server.start({ demoApp: `webhook = "${hook.url}"` });
  t.after(() => server.stop());
  const opts = options(server, "alice");
  opts.bindings.push({ app: OTHER_APP, token: token("alice", { app: OTHER_APP, secret: OTHER_SECRET }) });
  const client = new TetherClient(opts);
  t.after(() => client.close());
  await within(client.connect(), WAIT_MS, "connect");

  const reply = await within(client.upstream(APP, "chat", { to: "bob", text: "hi" }), WAIT_MS, "upstream");
  assert.deepEqual(reply, { app: APP, status: 200, payload: { kind: "json", value: { delivered: true, echo: { to: "bob", text: "hi" } } } });
  assert.equal(hook.seen[0].user, "alice");

  const bytes = await within(client.upstream(APP, "telemetry", new Uint8Array([1, 2, 3])), WAIT_MS, "upstream");
  assert.equal(bytes.status, 204);
  assert.equal(hook.seen[1].payload_base64, "AQID", "bytes travel as base64");

  const refused = await within(client.upstream(APP, "refuse", null), WAIT_MS, "upstream");
  assert.equal(refused.status, 403);
  assert.deepEqual(refused.payload, { kind: "binary", bytes: new TextEncoder().encode("no") });

  await assert.rejects(
    within(client.upstream(OTHER_APP, "chat", {}), WAIT_MS, "upstream"),
    (e: TetherError) => e.kind === "request" && e.code === 4303,
  );
  assert.throws(() => client.upstream(APP, "", {}), (e: TetherError) => e.kind === "config");
});

test("an upstream without an answer in time rejects with request_timeout, and one cut by a lost connection with connection_lost", async (t) => {
  if (!haveServer(t)) return;
  const hook = await webhook(t);
  const server = await Server.start({ demoApp: `webhook = "${hook.url}"` });
  t.after(() => server.stop());
  const client = new TetherClient(options(server, "alice"));
  t.after(() => client.close());
  await within(client.connect(), WAIT_MS, "connect");

  const started = Date.now();
  await assert.rejects(within(client.upstream(APP, "slow", {}, { timeoutMs: 300 }), WAIT_MS, "upstream"), (e: TetherError) => e.kind === "request_timeout");
  const took = Date.now() - started;
  assert.ok(took >= 290 && took < 1400, `timed out after ${took} ms`);

  const cut = client.upstream(APP, "slow", {}, { timeoutMs: 4000 });
  await new Promise((r) => setTimeout(r, 200));
  const restarted = server.restart();
  await assert.rejects(within(cut, WAIT_MS, "upstream"), (e: TetherError) => e.kind === "connection_lost");
  await restarted;
});

test("an upstream made while disconnected is sent after the reconnect", async (t) => {
  if (!haveServer(t)) return;
  const hook = await webhook(t);
  const server = await Server.start({ demoApp: `webhook = "${hook.url}"` });
  t.after(() => server.stop());
  const gate = { open: true };
  const wire = recordingWebSocket(gate);
  const client = new TetherClient(options(server, "alice", { WebSocket: wire.WebSocket }));
  t.after(() => client.close());
  const disconnects = new Collector(client, "disconnected");
  await within(client.connect(), WAIT_MS, "connect");

  gate.open = false;
  await server.restart();
  await disconnects.count(1, "the restart");
  assert.equal(client.state, "reconnecting");
  const reply = client.upstream(APP, "chat", "queued");
  gate.open = true;
  const answer = await within(reply, 3 * WAIT_MS, "the queued upstream");
  assert.equal(answer.status, 200);
  assert.deepEqual(answer.payload, { kind: "json", value: { delivered: true, echo: "queued" } });
});

test("sync answers last and head, and does not hand over pushes the client already had", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const client = new TetherClient(options(server, "alice"));
  t.after(() => client.close());
  const messages = new Collector(client, "message");
  await within(client.connect(), WAIT_MS, "connect");
  for (let n = 1; n <= 3; n++) await server.push(["alice"], { n }, 1);
  await messages.count(3, "pushes");

  const synced = await within(client.sync(APP, 0), WAIT_MS, "sync");
  assert.deepEqual(synced, { last: 3, head: 3 });
  const page = await within(client.sync(APP, 1, 1), WAIT_MS, "sync");
  assert.deepEqual(page, { last: 2, head: 3 });
  assert.equal(messages.seen.length, 3, "the sync's resends are dropped as duplicates");
});
