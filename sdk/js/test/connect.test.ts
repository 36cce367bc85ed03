/** Connecting, pushes of both qos, acks, several bindings, refusals: against a real node. */

import assert from "node:assert/strict";
import { test } from "node:test";
import { TetherClient, TetherError } from "../src/index.js";
import { APP, Collector, haveServer, OTHER_APP, OTHER_API_KEY, OTHER_SECRET, options, Server, token, WAIT_MS, within } from "./server.js";

test("a client connects, receives qos 0 and qos 1 pushes as typed events, and its cumulative ack reaches the server", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const client = new TetherClient(options(server, "alice", { device: "dev-1" }));
  t.after(() => client.close());
  await within(client.connect(), WAIT_MS, "connect");
  assert.equal(client.state, "connected");
  assert.equal(client.deviceId, "dev-1");
  const messages = new Collector(client, "message");

  await server.push(["alice"], { hello: "world" }, 0);
  await server.push(["alice"], { n: 1 }, 1);
  await server.push(["alice"], new Uint8Array([0, 255, 104, 105]), 1);
  await messages.count(3, "pushes");

  const [live, first, second] = messages.seen;
  assert.deepEqual(
    { qos: live!.qos, seq: live!.seq, payload: live!.payload },
    { qos: 0, seq: 0, payload: { kind: "json", value: { hello: "world" } } },
  );
  assert.match(live!.msgId, /^[0-9]+$/);
  assert.ok(live!.createdMs > 0);
  assert.deepEqual({ qos: first!.qos, seq: first!.seq, payload: first!.payload }, { qos: 1, seq: 1, payload: { kind: "json", value: { n: 1 } } });
  assert.equal(second!.seq, 2);
  assert.deepEqual(second!.payload, { kind: "binary", bytes: new Uint8Array([0, 255, 104, 105]) });

  client.ack(APP, 2);
  // The device's acked position, as the server holds it, within a bounded wait.
  const deadline = Date.now() + WAIT_MS;
  let acked: unknown;
  while (Date.now() < deadline) {
    const presence = await server.api("GET", `/v1/apps/${APP}/users/alice/presence`);
    acked = presence.json.devices.find((d: { device: string }) => d.device === "dev-1")?.acked;
    if (acked === 2) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(acked, 2, "the server records the cumulative ack");
});

test("one connection carries bindings of two apps, each with its own user", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const connectedSeen: { app: string; user: string }[][] = [];
  const opts = options(server, "alice");
  opts.bindings.push({ app: OTHER_APP, token: token("bob", { app: OTHER_APP, secret: OTHER_SECRET }) });
  const client = new TetherClient(opts);
  t.after(() => client.close());
  client.on("connected", (c) => connectedSeen.push(c.bindings));
  const messages = new Collector(client, "message");
  await within(client.connect(), WAIT_MS, "connect");

  await server.push(["alice"], { to: "alice" }, 1);
  await server.push(["bob"], { to: "bob" }, 1, OTHER_APP, OTHER_API_KEY);
  await messages.count(2, "pushes");
  const byApp = Object.fromEntries(messages.seen.map((m) => [m.app, m.payload]));
  assert.deepEqual(byApp, {
    [APP]: { kind: "json", value: { to: "alice" } },
    [OTHER_APP]: { kind: "json", value: { to: "bob" } },
  });
  assert.deepEqual(connectedSeen, [
    [
      { app: APP, user: "alice" },
      { app: OTHER_APP, user: "bob" },
    ],
  ]);
  assert.throws(() => client.ack("nope", 1), (e: TetherError) => e.kind === "config" && /not bound/.test(e.message));
});

test("a bad token fails connect with code 4204, and the error says the client does not reconnect", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const opts = options(server, "alice", { bindings: [{ app: APP, token: token("alice", { secret: "not-the-secret-0123456789" }) }] });
  const err = await within(
    new TetherClient(opts).connect().then(
      () => assert.fail("connect succeeded"),
      (e: unknown) => e,
    ),
    WAIT_MS,
    "connect",
  );
  assert.ok(err instanceof TetherError, String(err));
  assert.equal(err.kind, "rejected");
  assert.equal(err.code, 4204);
  assert.equal(err.willReconnect, false);
  assert.match(err.message, /code 4204/);
  assert.match(err.message, /does not reconnect/);
});

test("an unknown app fails connect with 4206, a close while connecting rejects it, and nothing listening fails it as a transport error", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const unknown = options(server, "alice", { bindings: [{ app: "ghost", token: token("alice", { app: "ghost" }) }] });
  await assert.rejects(within(new TetherClient(unknown).connect(), WAIT_MS, "connect"), (e: TetherError) => e.code === 4206 && !e.willReconnect);

  const closing = new TetherClient(options(server, "alice"));
  const connecting = closing.connect();
  closing.close();
  await assert.rejects(within(connecting, WAIT_MS, "connect"), (e: TetherError) => e.kind === "closed");

  const nobody = options(server, "alice", { url: "ws://127.0.0.1:1/ws" });
  await assert.rejects(within(new TetherClient(nobody).connect(), WAIT_MS, "connect"), (e: TetherError) => e.kind === "transport" && e.code === undefined);
});

test("without a WebSocket implementation the client says how to pass one, unless SSE may do", async (t) => {
  if ("WebSocket" in globalThis) {
    t.skip("this Node has a global WebSocket");
    return;
  }
  assert.throws(
    () => new TetherClient({ url: "ws://127.0.0.1:1/ws", bindings: [{ app: APP, token: "t" }], transports: ["websocket"] }),
    (e: TetherError) => e.kind === "config" && /options\.WebSocket/.test(e.message),
  );
  assert.throws(
    () => new TetherClient({ url: "ws://127.0.0.1:1/ws", bindings: [{ app: APP, token: "t" }], transports: ["carrier-pigeon" as "sse"] }),
    (e: TetherError) => e.kind === "config" && /unknown transport/.test(e.message),
  );
  // The default allows SSE, which needs only fetch (sse.test.ts connects that way).
  new TetherClient({ url: "ws://127.0.0.1:1/ws", bindings: [{ app: APP, token: "t" }] }).close();
});
