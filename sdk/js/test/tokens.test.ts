/** Token refresh: `expiring`, the getToken callback, `refresh`, and a close with 4205. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { TetherClient, TetherError } from "../src/index.js";
import { APP, Collector, haveServer, options, recordingWebSocket, Server, token, WAIT_MS, within } from "./server.js";

// The server announces `expiring` at once for a token with less than `token_warning` (60 s) left.
const SHORT_TTL_S = 30;

test("with getToken, an expiring token is replaced through refresh, and reconnects use the new one", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const fresh = token("alice", { ttlS: 600 });
  const asked: string[] = [];
  const wire = recordingWebSocket();
  const opts = options(server, "alice", {
    WebSocket: wire.WebSocket,
    getToken: async (app) => {
      asked.push(app);
      return fresh;
    },
  });
  opts.bindings[0]!.token = token("alice", { ttlS: SHORT_TTL_S });
  const client = new TetherClient(opts);
  t.after(() => client.close());
  const refreshed = new Collector(client, "tokenRefreshed");
  const connects = new Collector(client, "connected");
  await within(client.connect(), WAIT_MS, "connect");

  await refreshed.count(1, "tokenRefreshed");
  assert.deepEqual(asked, [APP]);
  assert.equal(refreshed.seen[0]!.app, APP);
  const expected = Math.floor(Date.now() / 1000) + 600;
  assert.ok(Math.abs(refreshed.seen[0]!.expiresS - expected) <= 5, `expires_s ${refreshed.seen[0]!.expiresS}`);
  assert.deepEqual(
    wire.sent.filter((f) => f.op === "refresh").map((f) => [f.app, f.token]),
    [[APP, fresh]],
  );

  await server.restart();
  await connects.count(2, "a reconnect", 2 * WAIT_MS);
  const connectFrames = wire.sent.filter((f) => f.op === "connect");
  assert.equal(connectFrames.at(-1)!.bindings[0].token, fresh, "the reconnect binds with the refreshed token");
});

test("a refused refresh (4306) is reported with refreshFailed, and the connection stays up", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const opts = options(server, "alice", { getToken: async () => token("mallory", { ttlS: 600 }) });
  opts.bindings[0]!.token = token("alice", { ttlS: SHORT_TTL_S });
  const client = new TetherClient(opts);
  t.after(() => client.close());
  const failed = new Collector(client, "refreshFailed");
  const messages = new Collector(client, "message");
  await within(client.connect(), WAIT_MS, "connect");

  await failed.count(1, "refreshFailed");
  const f = failed.seen[0]!;
  assert.equal(f.app, APP);
  assert.equal(f.code, 4306);
  assert.equal(f.retrying, true, "retried once, halfway to the expiry");
  await server.push(["alice"], "still here", 0);
  await messages.count(1, "a push after the refusal");
  assert.equal(client.state, "connected");
});

test("without getToken the application gets tokenExpiring and hands a token to refresh()", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const opts = options(server, "alice");
  opts.bindings[0]!.token = token("alice", { ttlS: SHORT_TTL_S });
  const client = new TetherClient(opts);
  t.after(() => client.close());
  const expiring = new Collector(client, "tokenExpiring");
  await within(client.connect(), WAIT_MS, "connect");

  await expiring.count(1, "tokenExpiring");
  assert.equal(expiring.seen[0]!.app, APP);
  await assert.rejects(
    within(client.refresh(APP, token("bob", { ttlS: 600 })), WAIT_MS, "refresh"),
    (e: TetherError) => e.kind === "request" && e.code === 4306,
  );
  const answer = await within(client.refresh(APP, token("alice", { ttlS: 900 })), WAIT_MS, "refresh");
  const expected = Math.floor(Date.now() / 1000) + 900;
  assert.ok(Math.abs(answer.expiresS - expected) <= 5, `expires_s ${answer.expiresS}`);
});

test("a connection closed for an expired token reconnects with getToken's new token, and ends without one", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start({ gateway: 'token_leeway = "0s"' });
  t.after(() => server.stop());

  // getToken fails while the first token is alive, so the server's 4205 comes.
  let fail = true;
  const opts = options(server, "alice", {
    getToken: async () => {
      if (fail) throw new Error("backend down");
      return token("alice", { ttlS: 600 });
    },
  });
  opts.bindings[0]!.token = token("alice", { ttlS: 2 });
  const renewing = new TetherClient(opts);
  t.after(() => renewing.close());
  const refreshFailed = new Collector(renewing, "refreshFailed");
  const disconnects = new Collector(renewing, "disconnected");
  const connects = new Collector(renewing, "connected");
  await within(renewing.connect(), WAIT_MS, "connect");
  await refreshFailed.count(1, "refreshFailed");
  assert.equal(refreshFailed.seen[0]!.code, undefined);
  assert.match(refreshFailed.seen[0]!.message, /getToken failed: backend down/);
  fail = false;
  await disconnects.count(1, "the 4205 close", 2 * WAIT_MS);
  assert.equal(disconnects.seen[0]!.code, 4205);
  assert.equal(disconnects.seen[0]!.reconnecting, true);
  await connects.count(2, "the reconnect with a new token");

  const plainOpts = options(server, "bob");
  plainOpts.bindings[0]!.token = token("bob", { ttlS: 2 });
  const plain = new TetherClient(plainOpts);
  t.after(() => plain.close());
  const ended = new Collector(plain, "disconnected");
  await within(plain.connect(), WAIT_MS, "connect");
  await ended.count(1, "the 4205 close", 2 * WAIT_MS);
  assert.equal(ended.seen[0]!.code, 4205);
  assert.equal(ended.seen[0]!.reconnecting, false);
  assert.equal(plain.state, "closed");
});
