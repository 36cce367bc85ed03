/** The dispatcher: endpoints from `GET /v1/dispatch`, failover to the next one, its fallback. */

import assert from "node:assert/strict";
import { createServer } from "node:net";
import { test } from "node:test";

import { TetherClient, TetherError, type FetchLike } from "../src/index.js";
import { Collector, haveServer, options, recordingWebSocket, Server, token, WAIT_MS, within } from "./server.js";

/** A port nothing listens on once this returns (bound, read, closed). */
async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
  const port = (probe.address() as { port: number }).port;
  await new Promise<void>((r) => probe.close(() => r()));
  return port;
}

/** The global fetch, recording URLs, failing while `down.value` is true. */
function recordingFetch(down = { value: false }): { fetch: FetchLike; urls: string[] } {
  const urls: string[] = [];
  const f: FetchLike = async (url, init) => {
    urls.push(url);
    if (down.value) throw new TypeError("fetch failed");
    return fetch(url, init);
  };
  return { fetch: f, urls };
}

test("a client with only a dispatcher connects where it says, skipping an endpoint that fails", async (t) => {
  if (!haveServer(t)) return;
  const wsPort = await freePort();
  const deadPort = await freePort();
  const dead = `ws://127.0.0.1:${deadPort}/ws`;
  const live = `ws://127.0.0.1:${wsPort}/ws`;
  const server = await Server.start({ ws: `127.0.0.1:${wsPort}`, node: `advertise_ws = ["${dead}", "${live}"]\nzone = "eu"` });
  t.after(() => server.stop());
  const fetcher = recordingFetch();
  const gate = { open: true };
  const wire = recordingWebSocket(gate);
  const client = new TetherClient(options(server, "alice", { url: undefined, dispatch: `${server.httpUrl}/v1/dispatch`, zone: "eu", fetch: fetcher.fetch, WebSocket: wire.WebSocket }));
  t.after(() => client.close());
  await within(client.connect(), WAIT_MS, "connect");
  assert.equal(client.url, live, "the dead endpoint was tried, then the next");
  const first = new URL(fetcher.urls[0]!);
  assert.equal(first.searchParams.get("app"), "demo");
  assert.equal(first.searchParams.get("transport"), "ws");
  assert.equal(first.searchParams.get("zone"), "eu");
  assert.equal(first.searchParams.get("failed"), null);

  // A round where every endpoint fails reports them; the dispatcher then has none to offer
  // (no_endpoints), the client forgets them and asks again until the node is back.
  const disconnects = new Collector(client, "disconnected");
  const connects = new Collector(client, "connected");
  gate.open = false;
  await server.restart();
  await disconnects.until((s) => s.some((d) => d.error.dispatchCode === "no_endpoints"), "a no_endpoints answer", 3 * WAIT_MS);
  const reported = fetcher.urls.map((u) => new URL(u).searchParams.get("failed")).filter((f) => f !== null);
  assert.ok(reported.some((f) => f!.split(",").includes(live) && f!.split(",").includes(dead)), `failed= reported: ${JSON.stringify(reported)}`);
  assert.ok(disconnects.seen.every((d) => d.reconnecting), "no_endpoints is retried");
  gate.open = true;
  await connects.count(1, "a reconnect", 3 * WAIT_MS);
  assert.equal(client.url, live);
});

test("when the dispatcher is down, the client reconnects to the endpoints it gave last", async (t) => {
  if (!haveServer(t)) return;
  const wsPort = await freePort();
  const server = await Server.start({ ws: `127.0.0.1:${wsPort}` });
  t.after(() => server.stop());
  const down = { value: false };
  const fetcher = recordingFetch(down);
  const client = new TetherClient(options(server, "alice", { url: undefined, dispatch: `${server.httpUrl}/v1/dispatch`, fetch: fetcher.fetch }));
  t.after(() => client.close());
  const connects = new Collector(client, "connected");
  await within(client.connect(), WAIT_MS, "connect");
  down.value = true;
  await server.restart();
  await connects.count(2, "a reconnect without the dispatcher", 3 * WAIT_MS);
  assert.equal(client.url, `ws://127.0.0.1:${wsPort}/ws`);
  assert.ok(fetcher.urls.length >= 2, "the dispatcher was asked again first");
});

test("while the dispatcher and the node are down, each round tries an endpoint once, even when url is the same", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const down = { value: false };
  const fetcher = recordingFetch(down);
  const wire = recordingWebSocket();
  // `url` is the node's WebSocket address, which the dispatcher gives as its endpoint too.
  const client = new TetherClient(options(server, "alice", { dispatch: `${server.httpUrl}/v1/dispatch`, fetch: fetcher.fetch, WebSocket: wire.WebSocket }));
  t.after(() => client.close());
  /** Sockets opened so far, at each `disconnected` (the close, then one per failed round). */
  const openedAt: number[] = [];
  client.on("disconnected", () => openedAt.push(wire.opened.length));
  await within(client.connect(), WAIT_MS, "connect");
  down.value = true;
  await server.stop();
  const disconnects = new Collector(client, "disconnected");
  await disconnects.count(4, "the close and three failed rounds", 3 * WAIT_MS);
  const perRound = openedAt.slice(1, 4).map((n, i) => n - openedAt[i]!);
  assert.deepEqual(perRound, [1, 1, 1], `sockets opened per round: ${JSON.stringify(perRound)}`);
});

test("a dispatcher's 401 fails connect without a retry", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  const opts = options(server, "alice", { url: undefined, dispatch: `${server.httpUrl}/v1/dispatch` });
  opts.bindings[0]!.token = token("alice", { secret: "not-the-secret-0123456789" });
  await assert.rejects(within(new TetherClient(opts).connect(), WAIT_MS, "connect"), (e: TetherError) => {
    return e.kind === "dispatch" && e.status === 401 && e.willReconnect === false && /401/.test(e.message);
  });
});

test("the dispatcher calls fetch as a plain function, as a browser's fetch requires", async (t) => {
  if (!haveServer(t)) return;
  const server = await Server.start();
  t.after(() => server.stop());
  // A browser's `window.fetch` throws "Illegal invocation" when `this` is another object
  // (seen in Chromium: `this.fetchImpl(...)` failed every dispatch). This one does the same.
  let calls = 0;
  const strictFetch = function (this: unknown, url: string, init: Parameters<FetchLike>[1]) {
    calls++;
    if (this !== undefined && this !== globalThis) throw new TypeError("Failed to execute 'fetch' on 'Window': Illegal invocation");
    return fetch(url, init);
  } as FetchLike;
  const client = new TetherClient(options(server, "alice", { url: undefined, dispatch: `${server.httpUrl}/v1/dispatch`, fetch: strictFetch }));
  t.after(() => client.close());
  await within(client.connect(), WAIT_MS, "connect");
  assert.equal(client.url, server.wsUrl);
  assert.equal(calls, 1);
});
