/** The SSE transport and the fallback from WebSocket, against a real node. */

import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";

import { TetherClient, type TetherError, type WebSocketConstructor } from "../src/index.js";
import { APP, Collector, cuttableFetch, haveServer, options, recordingWebSocket, Server, sleep, token, WAIT_MS, webhook, within } from "./server.js";

test("over SSE alone a client receives qos 0 and qos 1 pushes, acks them (the presence API shows it) and says it uses SSE", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  // No WebSocket implementation at all: SSE needs only fetch.
  const client = new TetherClient(options(server, "alice", { device: "sse-1", transports: ["sse"], WebSocket: undefined }));
  t.after(() => client.close());
  const transports = new Collector(client, "transport");
  const connected = new Collector(client, "connected");
  const messages = new Collector(client, "message");
  await within(client.connect(), WAIT_MS, "connect");

  assert.equal(client.transport, "sse");
  assert.deepEqual(transports.seen, [{ transport: "sse", previous: undefined }]);
  const [up] = connected.seen;
  assert.equal(up!.transport, "sse");
  assert.equal(up!.url, server.wsUrl.replace("ws://", "http://").replace(/\/ws$/, "/v1/sse"));
  assert.equal(client.url, up!.url);
  assert.deepEqual(up!.bindings, [{ app: APP, user: "alice" }]);
  const presence = await server.presence("alice");
  assert.equal(presence.online, true);
  assert.deepEqual([presence.connections[0].device, presence.connections[0].transport], ["sse-1", "sse"]);

  await server.push(["alice"], { hello: "sse" }, 0);
  await server.push(["alice"], { n: 1 }, 1);
  await server.push(["alice"], new Uint8Array([0, 255, 10, 13]), 1);
  await messages.count(3, "pushes");
  assert.deepEqual(
    messages.seen.map((m) => [m.qos, m.seq, m.payload]),
    [
      [0, 0, { kind: "json", value: { hello: "sse" } }],
      [1, 1, { kind: "json", value: { n: 1 } }],
      [1, 2, { kind: "binary", bytes: new Uint8Array([0, 255, 10, 13]) }],
    ],
  );
  client.ack(APP, 1);
  await server.ackedAt("alice", "sse-1", 1);
  client.ack(APP, 2);
  await server.ackedAt("alice", "sse-1", 2);

  // An ack just before close() is posted before the stream goes.
  await server.push(["alice"], { n: 3 }, 1);
  await messages.count(4, "push 3");
  client.ack(APP, 3);
  client.close();
  await server.ackedAt("alice", "sse-1", 3);
});

test("over SSE: topics with publications and recovery, unsubscribe, upstream with the webhook's reply, sync, and request errors", async (t) => {
  if (!haveServer(t)) return;
  const hook = await webhook(t);
  const server = await Server.start({ demoApp: `webhook = "${hook.url}"` });
  t.after(() => server.stop());
  const client = new TetherClient(options(server, "alice", { transports: ["sse"] }));
  t.after(() => client.close());
  const subscribed = new Collector(client, "subscribed");
  const publications = new Collector(client, "publication");
  const unsubscribed = new Collector(client, "unsubscribed");
  const messages = new Collector(client, "message");
  await within(client.connect(), WAIT_MS, "connect");

  await server.publish("news", { n: 1 }, 1);
  await server.publish("news", { n: 2 }, 1);
  client.subscribe(APP, "room-1");
  client.subscribe(APP, "news", { since: 0 });
  await subscribed.count(2, "two subscribes answered");
  assert.deepEqual(
    subscribed.seen.map((s) => [s.topic, s.recovery, s.offset]).sort(),
    [
      ["news", "complete", 2],
      ["room-1", "live", 0],
    ],
  );
  await server.publish("room-1", { r: 1 }, 1);
  await server.publish("room-1", { r: "live" }, 0);
  await publications.count(4, "news 1 and 2 recovered, room-1 1 and live");
  assert.deepEqual(
    publications.seen.map((p) => [p.topic, p.offset, p.payload.kind === "json" ? p.payload.value : null]),
    [
      ["news", 1, { n: 1 }],
      ["news", 2, { n: 2 }],
      ["room-1", 1, { r: 1 }],
      ["room-1", 0, { r: "live" }],
    ],
  );
  client.unsubscribe(APP, "room-1");
  await unsubscribed.count(1, "unsubscribed");
  await server.publish("room-1", { r: 2 }, 1);

  const reply = await within(client.upstream(APP, "chat", { text: "over sse" }), WAIT_MS, "upstream");
  assert.deepEqual(reply, { app: APP, status: 200, payload: { kind: "json", value: { delivered: true, echo: { text: "over sse" } } } });
  assert.equal(hook.seen.at(-1).user, "alice");
  // Several requests in one turn go out together, and each gets its own answer.
  const replies = await within(Promise.all([1, 2, 3].map((n) => client.upstream(APP, "chat", { n }))), WAIT_MS, "three upstreams");
  assert.deepEqual(
    replies.map((r) => (r.payload.kind === "json" ? (r.payload.value as any).echo.n : null)),
    [1, 2, 3],
  );
  assert.equal((await within(client.upstream(APP, "refuse", null), WAIT_MS, "upstream")).status, 403);

  await server.push(["alice"], { n: 1 }, 1);
  await messages.count(1, "push 1");
  const synced = await within(client.sync(APP, 0), WAIT_MS, "sync");
  assert.deepEqual(synced, { last: 1, head: 1 });
  assert.equal(messages.seen.length, 1, "the sync's copy of push 1 is dropped as handed over");

  // An upload over max_frame is refused here, as the server's 413 would: nothing else is lost.
  const big = "x".repeat(70_000);
  await assert.rejects(within(client.upstream(APP, "chat", big), WAIT_MS, "upstream"), (e: TetherError) => e.kind === "request" && e.code === 4300 && /max_frame/.test(e.message));
  assert.equal(client.state, "connected");
  assert.equal((await within(client.upstream(APP, "chat", "after"), WAIT_MS, "upstream")).status, 200);
  await sleep(100);
  assert.equal(publications.seen.length, 4, "nothing from room-1 after the unsubscribe");
});

test("an SSE stream refused with HTTP 401 or 404 stops the client with the same codes as WebSocket", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const bad = new TetherClient(options(server, "alice", { transports: ["sse"], bindings: [{ app: APP, token: token("alice", { secret: "wrong-secret-0123456789" }) }] }));
  await assert.rejects(within(bad.connect(), WAIT_MS, "connect"), (e: TetherError) => {
    assert.deepEqual([e.kind, e.code, e.willReconnect, e.status], ["rejected", 4204, false, 401]);
    assert.match(e.message, /code 4204, the client does not reconnect/);
    return true;
  });
  const unknown = new TetherClient(
    options(server, "alice", {
      transports: ["sse"],
      bindings: [
        { app: APP, token: token("alice") },
        { app: "ghost", token: token("alice", { app: "ghost" }) },
      ],
    }),
  );
  await assert.rejects(within(unknown.connect(), WAIT_MS, "connect"), (e: TetherError) => e.code === 4206 && e.status === 404 && !e.willReconnect);
  const nobody = new TetherClient(options(server, "alice", { transports: ["sse"], url: "ws://127.0.0.1:1/ws" }));
  await assert.rejects(within(nobody.connect(), WAIT_MS, "connect"), (e: TetherError) => e.kind === "transport" && e.code === undefined && /127\.0\.0\.1:1\/v1\/sse/.test(e.message));
});

test("a stream cut by the network is reopened with the positions held: pushes and publications made meanwhile arrive, none twice", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const gate = { open: true };
  const net = cuttableFetch(gate);
  const client = new TetherClient(options(server, "alice", { device: "sse-resume", transports: ["sse"], fetch: net.fetch }));
  t.after(() => client.close());
  const messages = new Collector(client, "message");
  const publications = new Collector(client, "publication");
  const subscribed = new Collector(client, "subscribed");
  const disconnects = new Collector(client, "disconnected");
  const connects = new Collector(client, "connected");
  await within(client.connect(), WAIT_MS, "connect");
  client.subscribe(APP, "room-1");
  await subscribed.count(1, "subscribed");
  await server.push(["alice"], { n: 1 }, 1);
  await server.push(["alice"], { n: 2 }, 1);
  await server.publish("room-1", { r: 1 }, 1);
  await messages.count(2, "pushes 1 and 2");
  await publications.count(1, "room-1 #1");
  client.ack(APP, 1); // 2 is handed over but not acked: the resume is from what was handed over.
  await server.ackedAt("alice", "sse-resume", 1);

  gate.open = false;
  net.cut();
  await disconnects.count(1, "the cut");
  assert.equal(disconnects.seen[0]!.reconnecting, true);
  assert.equal(disconnects.seen[0]!.code, undefined);
  await waitFor(async () => !(await server.presence("alice")).online, "the server to see the stream go");
  for (const n of [3, 4]) await server.push(["alice"], { n }, 1);
  await server.publish("room-1", { r: 2 }, 1);
  gate.open = true;
  await connects.count(2, "the reconnect", WAIT_MS * 2);
  await messages.count(4, "pushes 3 and 4");
  await publications.count(2, "room-1 #2");
  assert.deepEqual(
    messages.seen.map((m) => m.seq),
    [1, 2, 3, 4],
  );
  assert.deepEqual(
    publications.seen.map((p) => p.offset),
    [1, 2],
  );
  const again = net.streams.at(-1)!;
  assert.match(again, /[?&]last_seq=2(&|$)/, "the stream asks for what follows the last seq handed over");
  const resubscribe = net.posts.map((p) => JSON.parse(p)).flat().find((f) => f.op === "subscribe" && f.since === 1);
  assert.ok(resubscribe, `room-1 is subscribed again with since 1; posts: ${net.posts.join(" ")}`);
  client.ack(APP, 4);
  await server.ackedAt("alice", "sse-resume", 4);
});

test("a stream the server ends (shutdown, then a crash) is reopened after it comes back, and pushes resume", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const client = new TetherClient(options(server, "alice", { device: "sse-restart", transports: ["sse"] }));
  t.after(() => client.close());
  const messages = new Collector(client, "message");
  const disconnects = new Collector(client, "disconnected");
  const connects = new Collector(client, "connected");
  await within(client.connect(), WAIT_MS, "connect");
  await server.push(["alice"], { n: 1 }, 1);
  await messages.count(1, "push 1");

  await server.restart();
  assert.equal(disconnects.seen[0]?.code, 4100, "a shutdown's disconnect event names its code");
  assert.equal(disconnects.seen[0]?.reconnecting, true);
  await connects.count(2, "the reconnect after the shutdown", WAIT_MS * 2);
  await server.push(["alice"], { n: 2 }, 1);
  await messages.count(2, "push 2");

  await server.restart({ hard: true });
  await connects.count(3, "the reconnect after the crash", WAIT_MS * 2);
  await server.push(["alice"], { n: 3 }, 1);
  await messages.count(3, "push 3");
  assert.deepEqual(
    messages.seen.map((m) => m.seq),
    [1, 2, 3],
  );
  assert.ok(disconnects.seen.every((d) => d.reconnecting));
});

test("when the WebSocket is refused, connect() comes up over SSE at once; after a drop, two failed WebSockets in a row move it to SSE, and after the period it tries WebSocket again", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());

  // A WebSocket that cannot connect (its connections go to a closed port): first round.
  const blocked = recordingWebSocket({ open: false });
  const first = new TetherClient(options(server, "bob", { WebSocket: blocked.WebSocket, transports: undefined })); // the default: both
  t.after(() => first.close());
  const firstTransports = new Collector(first, "transport");
  await within(first.connect(), WAIT_MS, "connect");
  assert.equal(first.transport, "sse");
  assert.equal(blocked.opened.length, 1, "one WebSocket attempt, then SSE in the same round");
  assert.deepEqual(firstTransports.seen, [{ transport: "sse", previous: undefined }]);
  first.close();

  // Up over WebSocket; then WebSockets fail while SSE still goes through.
  const gate = { open: true };
  const ws = recordingWebSocket(gate);
  const net = cuttableFetch();
  const client = new TetherClient(
    options(server, "alice", {
      device: "fallback",
      transports: ["websocket", "sse"],
      WebSocket: ws.WebSocket,
      fetch: net.fetch,
      fallbackAfter: 2,
      retryFirstTransportMs: 3000,
    }),
  );
  t.after(() => client.close());
  const transports = new Collector(client, "transport");
  const connects = new Collector(client, "connected");
  const disconnects = new Collector(client, "disconnected");
  const messages = new Collector(client, "message");
  await within(client.connect(), WAIT_MS, "connect");
  assert.equal(client.transport, "websocket");
  assert.equal(net.streams.length, 0);

  gate.open = false;
  const before = ws.opened.length;
  ws.drop();
  await connects.count(2, "the reconnect over SSE", WAIT_MS * 2);
  const switchedAt = Date.now();
  assert.equal(client.transport, "sse");
  assert.equal(ws.opened.length - before, 2, "two WebSocket attempts failed in a row, then SSE");
  assert.deepEqual(
    transports.seen.map((e) => [e.transport, e.previous]),
    [
      ["websocket", undefined],
      ["sse", "websocket"],
    ],
  );
  assert.equal(connects.seen[1]!.transport, "sse");
  // The drop, then the round whose one WebSocket failed: no code, and the client goes on.
  assert.deepEqual(
    disconnects.seen.map((d) => [d.code, d.reconnecting]),
    [
      [undefined, true],
      [undefined, true],
    ],
  );
  assert.match(disconnects.seen[1]!.error.message, /1006.*the client reconnects/);
  await server.push(["alice"], { n: 1 }, 1);
  await messages.count(1, "push 1 over SSE");

  // Within the period, a drop of the stream reconnects over SSE, without trying WebSocket.
  gate.open = true;
  const opened = ws.opened.length;
  net.cut();
  await connects.count(3, "the reconnect after the stream's drop", WAIT_MS * 2);
  assert.ok(Date.now() - switchedAt < 3000, "the test is still within the period");
  assert.equal(client.transport, "sse");
  assert.equal(ws.opened.length, opened, "no WebSocket attempt within the period");

  // After it, the next reconnect tries WebSocket once more, which works again.
  await sleep(switchedAt + 3000 - Date.now());
  net.cut();
  await connects.count(4, "the reconnect after the period", WAIT_MS * 2);
  assert.equal(client.transport, "websocket");
  assert.deepEqual(transports.seen.at(-1), { transport: "websocket", previous: "sse" });
  await server.push(["alice"], { n: 2 }, 1);
  await messages.count(2, "push 2 over WebSocket");
  assert.deepEqual(
    messages.seen.map((m) => m.seq),
    [1, 2],
  );
});

test("a quiet stream stays up on the server's keep-alives with no heartbeat from the client, and a silent server is detected", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const net = cuttableFetch();
  const client = new TetherClient(options(server, "alice", { transports: ["sse"], fetch: net.fetch, heartbeatMs: 300, connectTimeoutMs: 1000 }));
  t.after(() => client.close());
  const disconnects = new Collector(client, "disconnected");
  const connects = new Collector(client, "connected");
  await within(client.connect(), WAIT_MS, "connect");
  assert.equal(connects.seen[0]!.heartbeatMs, 300);

  // Five intervals with nothing to say: the server's comments keep the stream, the client posts nothing.
  await sleep(1500);
  assert.equal(disconnects.seen.length, 0, "the stream stays up");
  assert.deepEqual(net.posts, [], "no ping from the client on a stream (section 14.1)");

  server.pause(true);
  await disconnects.count(1, "the silence noticed");
  server.pause(false);
  assert.match(disconnects.seen[0]!.reason, /nothing from the server for \d+ ms \(not even a keep-alive\)/);
  assert.deepEqual([disconnects.seen[0]!.code, disconnects.seen[0]!.reconnecting], [undefined, true]);
  await connects.count(2, "a reconnect", 2 * WAIT_MS);
});

test("a WebSocket that cannot even be constructed (blocked) moves a reconnect to SSE at once, without waiting for fallbackAfter", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const wire = recordingWebSocket();
  const blocked = { now: false, tries: 0 };
  class Blockable extends (wire.WebSocket as unknown as new (url: string) => object) {
    constructor(url: string) {
      blocked.tries += 1;
      if (blocked.now) throw new Error("refused to connect: the page's policy blocks WebSocket");
      super(url);
    }
  }
  const client = new TetherClient(
    options(server, "alice", { transports: ["websocket", "sse"], WebSocket: Blockable as unknown as WebSocketConstructor, fallbackAfter: 5 }),
  );
  t.after(() => client.close());
  const connects = new Collector(client, "connected");
  await within(client.connect(), WAIT_MS, "connect");
  assert.equal(client.transport, "websocket");

  blocked.now = true;
  const tries = blocked.tries;
  wire.drop();
  await connects.count(2, "the reconnect", WAIT_MS * 2);
  assert.equal(client.transport, "sse");
  assert.equal(blocked.tries - tries, 1, "one WebSocket that threw, then SSE in the same round");

  // With WebSocket alone, the same WebSocket is a configuration problem: connect() fails.
  const only = new TetherClient(options(server, "bob", { WebSocket: Blockable as unknown as WebSocketConstructor }));
  await assert.rejects(within(only.connect(), WAIT_MS, "connect"), (e: TetherError) => e.kind === "config" && /policy blocks/.test(e.message) && !e.willReconnect);
});

test("through a dispatcher, a blocked WebSocket falls back to the endpoint's SSE stream: the one the answer names, else derived", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const blocked = recordingWebSocket({ open: false });
  const viaTether = new TetherClient(
    options(server, "alice", { url: undefined, dispatch: `${server.httpUrl}/v1/dispatch`, transports: ["websocket", "sse"], WebSocket: blocked.WebSocket }),
  );
  t.after(() => viaTether.close());
  await within(viaTether.connect(), WAIT_MS, "connect through tether's dispatcher");
  assert.equal(viaTether.transport, "sse");
  assert.equal(viaTether.url, server.wsUrl.replace("ws://", "http://").replace(/\/ws$/, "/v1/sse"), "derived from the endpoint the dispatcher gave");
  viaTether.close();

  // A dispatcher whose endpoint names its stream: the WebSocket URL is dead, the `sse` one is the node's.
  const stream = server.wsUrl.replace("ws://", "http://").replace(/\/ws$/, "/v1/sse");
  const asked: string[] = [];
  const dispatcher = createServer((req, res) => {
    asked.push(req.url ?? "");
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ app: APP, user: "bob", endpoints: [{ url: "ws://127.0.0.1:1/ws", transport: "ws", node: "n", sse: stream }] }));
  });
  await new Promise<void>((r) => dispatcher.listen(0, "127.0.0.1", r));
  t.after(() => {
    dispatcher.closeAllConnections();
    dispatcher.close();
  });
  const named = new TetherClient(
    options(server, "bob", {
      url: undefined,
      dispatch: `http://127.0.0.1:${(dispatcher.address() as AddressInfo).port}/v1/dispatch`,
      transports: ["websocket", "sse"],
    }),
  );
  t.after(() => named.close());
  await within(named.connect(), WAIT_MS, "connect through a dispatcher that names the stream");
  assert.deepEqual([named.transport, named.url], ["sse", stream]);
  assert.match(asked[0]!, /transport=ws/);
});

/** Polls `check` until it holds, within WAIT_MS. */
async function waitFor(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}
