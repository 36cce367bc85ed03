/** Topics: subscribe, publications, recovery with `since` across a reconnect, `too_old`. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { TetherClient, TetherError } from "../src/index.js";
import { APP, Collector, haveServer, options, recordingWebSocket, Server, sleep, token, WAIT_MS, within } from "./server.js";

test("a subscribed client gets publications as events, and none after unsubscribing", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const client = new TetherClient(options(server, "alice"));
  t.after(() => client.close());
  const subscribed = new Collector(client, "subscribed");
  const publications = new Collector(client, "publication");
  const unsubscribed = new Collector(client, "unsubscribed");
  await within(client.connect(), WAIT_MS, "connect");

  client.subscribe(APP, "room-1");
  await subscribed.count(1, "subscribed");
  assert.deepEqual(subscribed.seen[0], { type: "subscribed", app: APP, topic: "room-1", offset: 0, recovery: "live", since: undefined, serverSide: false });

  await server.publish("room-1", { text: "kept" }, 1);
  await server.publish("room-1", { text: "live" }, 0);
  await publications.count(2, "publications");
  assert.deepEqual(
    publications.seen.map((p) => [p.topic, p.offset, p.payload]),
    [
      ["room-1", 1, { kind: "json", value: { text: "kept" } }],
      ["room-1", 0, { kind: "json", value: { text: "live" } }],
    ],
  );

  client.unsubscribe(APP, "room-1");
  await unsubscribed.count(1, "unsubscribed");
  assert.deepEqual(unsubscribed.seen[0], { type: "unsubscribed", app: APP, topic: "room-1", serverSide: false });
  await server.publish("room-1", { text: "after" }, 1);
  // A publication would arrive within this window if the unsubscribe had not taken.
  await sleep(300);
  assert.equal(publications.seen.length, 2);

  assert.throws(() => client.subscribe(APP, ""), (e: TetherError) => e.kind === "config" && /1 to 128 bytes/.test(e.message));
  assert.throws(() => client.subscribe(APP, "a\nb"), (e: TetherError) => e.kind === "config" && /control/.test(e.message));
});

test("after a reconnect the client resubscribes with since and recovers what it missed, without duplicates", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const gate = { open: true };
  const wire = recordingWebSocket(gate);
  const client = new TetherClient(options(server, "alice", { WebSocket: wire.WebSocket }));
  t.after(() => client.close());
  const subscribed = new Collector(client, "subscribed");
  const publications = new Collector(client, "publication");
  const connects = new Collector(client, "connected");
  await within(client.connect(), WAIT_MS, "connect");

  client.subscribe(APP, "room-2");
  await subscribed.count(1, "subscribed");
  await server.publish("room-2", { n: 1 }, 1);
  await publications.count(1, "publication 1");

  gate.open = false;
  await server.restart();
  await server.publish("room-2", { n: 2 }, 1);
  await server.publish("room-2", { n: 3 }, 1);
  gate.open = true;
  await connects.count(2, "a reconnect", 2 * WAIT_MS);
  await subscribed.count(2, "the resubscribe");
  assert.deepEqual(subscribed.seen[1], { type: "subscribed", app: APP, topic: "room-2", offset: 3, recovery: "complete", since: 1, serverSide: false });
  await publications.count(3, "recovered publications");
  await server.publish("room-2", { n: 4 }, 1);
  await publications.count(4, "a live publication");
  assert.deepEqual(
    publications.seen.map((p) => p.offset),
    [1, 2, 3, 4],
  );
  const subscribes = wire.sent.filter((f) => f.op === "subscribe").map((f) => f.since);
  assert.deepEqual(subscribes, [undefined, 1]);
});

test("a subscribe with since older than the history is answered too_old", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start({ store: "topic_history = 2" });
  t.after(() => server.stop());
  for (let n = 1; n <= 5; n++) await server.publish("room-3", { n }, 1);
  const client = new TetherClient(options(server, "alice"));
  t.after(() => client.close());
  const subscribed = new Collector(client, "subscribed");
  const publications = new Collector(client, "publication");
  await within(client.connect(), WAIT_MS, "connect");

  client.subscribe(APP, "room-3", { since: 1 });
  await subscribed.count(1, "subscribed");
  assert.deepEqual(subscribed.seen[0], { type: "subscribed", app: APP, topic: "room-3", offset: 5, recovery: "too_old", since: 1, serverSide: false });
  await server.publish("room-3", { n: 6 }, 1);
  await publications.count(1, "a live publication");
  assert.equal(publications.seen[0]!.offset, 6, "nothing is recovered, live ones follow");
});

test("a subscription the business makes through the API arrives as a server-side subscribed event", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const client = new TetherClient(options(server, "alice"));
  t.after(() => client.close());
  const subscribed = new Collector(client, "subscribed");
  const unsubscribed = new Collector(client, "unsubscribed");
  const publications = new Collector(client, "publication");
  await within(client.connect(), WAIT_MS, "connect");

  const res = await server.api("POST", `/v1/apps/${APP}/users/alice/topics/news`);
  assert.equal(res.status, 200, JSON.stringify(res.json));
  await subscribed.count(1, "subscribed");
  assert.equal(subscribed.seen[0]!.serverSide, true);
  assert.equal(subscribed.seen[0]!.topic, "news");
  await server.publish("news", "extra", 1);
  await publications.count(1, "a publication");

  const del = await server.api("DELETE", `/v1/apps/${APP}/users/alice/topics/news`);
  assert.equal(del.status, 200, JSON.stringify(del.json));
  await unsubscribed.count(1, "unsubscribed");
  assert.equal(unsubscribed.seen[0]!.serverSide, true);
});

test("a topic under a token rule is refused without a subscription token (4305) and joined with one", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start({ topics: '[[apps.topics]]\npattern = "vip.*"\nallow = "token"' });
  t.after(() => server.stop());
  const wire = recordingWebSocket();
  const client = new TetherClient(options(server, "alice", { WebSocket: wire.WebSocket }));
  t.after(() => client.close());
  const failed = new Collector(client, "subscribeFailed");
  const subscribed = new Collector(client, "subscribed");
  await within(client.connect(), WAIT_MS, "connect");

  client.subscribe(APP, "vip.gold");
  await failed.count(1, "subscribeFailed");
  assert.equal(failed.seen[0]!.code, 4305);
  assert.equal(failed.seen[0]!.retrying, false, "a refusal forgets the topic");

  const grant = token("alice", { claims: { topic: "vip.gold" } });
  client.subscribe(APP, "vip.gold", { token: grant });
  await subscribed.count(1, "subscribed");
  assert.equal(subscribed.seen[0]!.topic, "vip.gold");
  const sent = wire.sent.filter((f) => f.op === "subscribe");
  assert.deepEqual(
    sent.map((f) => f.token),
    [undefined, grant],
  );
});
