/**
 * The example page behind a proxy that strips WebSocket upgrades (as some corporate proxies
 * do): the SDK's WebSocket fails (the browser reports 1006), and the page comes up over
 * Server-Sent Events through the same proxy, then receives, acks, follows a topic and sends
 * upstream as it would over WebSocket, and says which transport it uses.
 *
 * Chromium's DevTools `Network.setBlockedURLs` does not block WebSocket handshakes (checked
 * with Chromium 156: the upgrade request still reached the server), so the block is a real
 * proxy in front of the node, the way it happens in the field.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { APP, haveTools, launchChromium, screenshot, Server, StaticSite, until, UpgradeStrippingProxy, Webhook } from "./harness.js";
import { cleanups, ExamplePage, steps } from "./page.js";

test("with WebSocket blocked by a proxy, the example page falls back to SSE, receives, acks, follows a topic and says it uses SSE", { timeout: 120_000 }, async (t) => {
  if (!haveTools(t)) return;
  const cleanup = cleanups(t);
  const hook = await Webhook.start();
  cleanup(() => hook.close());
  const server = await Server.start({ webhook: hook.url });
  cleanup(() => server.stop());
  const proxy = await UpgradeStrippingProxy.start(server.wsUrl);
  cleanup(() => proxy.close());
  const site = await StaticSite.start();
  cleanup(() => site.close());
  const chromium = await launchChromium();
  cleanup(() => chromium.close());
  const page = await ExamplePage.open(chromium, site.pageUrl());
  cleanup(() => page.close("sse-fallback-page-at-the-end"));
  const step = steps(t);
  const token = await server.token("dora");
  let device = "";

  await step("connects over SSE once the proxy refuses the WebSocket upgrade, and shows it", async () => {
    await page.fill("url", proxy.wsUrl);
    await page.fill("token", token);
    await page.click("connect");
    await page.waitFor(async () => (await page.text("state")) === "connected", "the state connected");
    assert.equal(await page.text("transport"), "sse");
    assert.ok(proxy.upgrades >= 1, "the page tried WebSocket first, and the proxy refused it");
    const [connected] = await page.events("connected");
    assert.equal(connected.transport, "sse");
    assert.equal(connected.url, proxy.wsUrl.replace("ws://", "http://").replace(/\/ws$/, "/v1/sse"), "the stream's URL, derived from the WebSocket URL");
    assert.deepEqual(
      (await page.events("transport")).map((e) => e.transport),
      ["sse"],
    );
    device = await page.text("device");
    const presence = await server.presence("dora");
    assert.deepEqual(
      presence.connections.map((c) => [c.device, c.transport]),
      [[device, "sse"]],
      "the server holds one SSE connection for the page",
    );
  });

  await step("shows a qos 0 and a qos 1 push and acks the qos 1 one: the presence API shows it", async () => {
    await server.push("dora", { n: "live" }, 0);
    assert.equal((await server.push("dora", { n: 1 }, 1)).seqs.dora, 1);
    const pushes = await page.waitFor(async () => {
      const p = await page.pushes();
      return p.length >= 2 && p;
    }, "two pushes");
    assert.deepEqual(
      pushes.map((p) => [p.qos, p.seq, p.payload]).sort(),
      [
        ["0", "0", '{"n":"live"}'],
        ["1", "1", '{"n":1}'],
      ],
    );
    await until(
      async () => (await server.presence("dora")).devices.some((d) => d.device === device && d.acked === 1),
      `device ${device} acked at 1 (the ack went in a POST to the stream's session)`,
    );
  });

  await step("subscribes to a topic, with its history recovered, and shows a publication", async () => {
    assert.equal((await server.publish("room-9", { r: 1 }, 1)).offset, 1);
    await page.fill("topic", "room-9");
    await page.fill("since", "0");
    await page.click("subscribe");
    await page.waitFor(async () => (await page.events("subscribed")).some((e) => e.topic === "room-9"), "subscribed to room-9");
    await server.publish("room-9", { r: 2 }, 1);
    await page.waitFor(async () => (await page.publications("room-9")).length >= 2, "room-9 #1 (recovered) and #2");
    assert.deepEqual(
      (await page.publications("room-9")).map((p) => [p.offset, p.payload]),
      [
        ["1", '{"r":1}'],
        ["2", '{"r":2}'],
      ],
    );
  });

  await step("sends upstream and shows the webhook's answer", async () => {
    await page.fill("kind", "chat");
    await page.fill("data", '{"text":"over sse"}');
    await page.click("send");
    const [reply] = await page.waitFor(async () => {
      const r = await page.events("reply");
      return r.length > 0 && r;
    }, "the upstream's reply");
    assert.equal(reply.status, "200");
    assert.deepEqual(JSON.parse(reply.payload), { echo: { text: "over sse" }, user: "dora" });
  });

  await step("still on SSE, with no uncaught error in the page", async () => {
    assert.equal(await page.text("state"), "connected");
    assert.equal(await page.text("transport"), "sse");
    assert.equal((await page.events("disconnected")).length, 0, "one round: the WebSocket failed, SSE came up");
    assert.deepEqual(page.errors, [], "no uncaught error in the page");
    console.log(`screenshot: ${await screenshot(page.page, "sse-fallback-page")}`);
  });
});
