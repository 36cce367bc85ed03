/**
 * The browser example (../index.html, ../app.js) in headless Chromium against a real
 * `tether serve`: a person's clicks on the page, the business's calls to the HTTP API, and
 * checks of what the page shows and of what the server holds. Every wait is bounded; the
 * screenshot's path is printed.
 *
 * `npm test` here runs every case (it builds the SDK first); `cargo test -p tether --test
 * browser` runs each file with TETHER_BIN and CI=true.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { APP, haveTools, launchChromium, Proxy, screenshot, Server, StaticSite, until, WAIT_MS, Webhook } from "./harness.js";
import { cleanups, ExamplePage, steps } from "./page.js";

test("the example page connects, receives, acks, resumes after a drop and a kick, and recovers topics", { timeout: 180_000 }, async (t) => {
  if (!haveTools(t)) return;
  const cleanup = cleanups(t);
  const hook = await Webhook.start();
  cleanup(() => hook.close());
  const server = await Server.start({ webhook: hook.url });
  cleanup(() => server.stop());
  const proxy = await Proxy.start(server.wsUrl);
  cleanup(() => proxy.close());
  const site = await StaticSite.start();
  cleanup(() => site.close());
  const chromium = await launchChromium();
  cleanup(() => chromium.close());
  const page = await ExamplePage.open(chromium, site.pageUrl());
  cleanup(() => page.close("example-page-after-reload"));
  const step = steps(t);
  const token = await server.token("alice");
  let device = "";

  await step("connects with a token entered in the form", async () => {
    await page.fill("url", proxy.wsUrl);
    await page.fill("token", token);
    await page.click("connect");
    await page.waitFor(async () => (await page.text("state")) === "connected", "the state connected");
    assert.equal(await page.text("user"), "alice");
    device = await page.text("device");
    assert.match(device, /^js-[0-9a-f]+$/);
  });

  await step("shows a qos 0 and a qos 1 push sent through the HTTP API", async () => {
    await server.push("alice", { n: "live" }, 0);
    const durable = await server.push("alice", { n: 1 }, 1);
    assert.equal(durable.seqs.alice, 1);
    const pushes = await page.waitFor(async () => {
      const p = await page.pushes();
      return p.length >= 2 && p;
    }, "two pushes");
    // Sorted: the order between a live and a durable push is not the point here.
    assert.deepEqual(
      pushes.map((p) => [p.qos, p.seq, p.payload]).sort(),
      [
        ["0", "0", '{"n":"live"}'],
        ["1", "1", '{"n":1}'],
      ],
    );
  });

  await step("acks the qos 1 push: the presence API shows the device's acked position", async () => {
    await ackedAt(server, "alice", device, 1);
  });

  await step("subscribes to a topic from the form and shows its publications", async () => {
    await page.fill("topic", "room-1");
    await page.fill("since", "");
    await page.click("subscribe");
    await page.waitFor(async () => (await page.events("subscribed")).some((e) => e.topic === "room-1"), "subscribed to room-1");
    await server.publish("room-1", { r: 1 }, 1);
    await server.publish("room-1", { r: "live" }, 0);
    await page.waitFor(async () => (await page.publications("room-1")).length >= 2, "two publications of room-1");
    assert.deepEqual(
      (await page.publications("room-1")).map((p) => [p.offset, p.payload]).sort(),
      [
        ["0", '{"r":"live"}'],
        ["1", '{"r":1}'],
      ],
    );
  });

  await step("recovers a topic's history with since from the form", async () => {
    await server.publish("news", { n: 1 }, 1);
    await server.publish("news", { n: 2 }, 1);
    await page.fill("topic", "news");
    await page.fill("since", "0");
    await page.click("subscribe");
    await page.waitFor(async () => (await page.publications("news")).length >= 2, "news #1 and #2 recovered");
    const subscribed = (await page.events("subscribed")).find((e) => e.topic === "news");
    assert.deepEqual([subscribed.since, subscribed.recovery, subscribed.offset], ["0", "complete", "2"]);
    assert.deepEqual(
      (await page.publications("news")).map((p) => [p.offset, p.payload]),
      [
        ["1", '{"n":1}'],
        ["2", '{"n":2}'],
      ],
    );
  });

  await step("sends upstream from the form and shows the webhook's answer", async () => {
    await page.fill("kind", "chat");
    await page.fill("data", '{"text":"hi"}');
    await page.click("send");
    const [reply] = await page.waitFor(async () => {
      const r = await page.events("reply");
      return r.length > 0 && r;
    }, "the upstream's reply");
    assert.equal(reply.status, "200");
    assert.deepEqual(JSON.parse(reply.payload), { echo: { text: "hi" }, user: "alice" });
    const sent = hook.received.find((b) => b.type === "upstream");
    assert.deepEqual([sent.app, sent.kind, sent.user, sent.device, sent.payload], [APP, "chat", "alice", device, { text: "hi" }]);
  });

  await step("after a network drop, the SDK reconnects by itself and resumes without loss", async () => {
    proxy.cut();
    await page.waitFor(
      async () => (await page.events("disconnected")).some((e) => e.reconnecting === "true") && (await page.text("state")) === "reconnecting",
      "the page to see the drop and reconnect",
    );
    await until(async () => !(await server.presence("alice")).online, "the server to see alice offline");
    // Sent while the page is away: held in the inbox and the topic's history.
    for (const n of [2, 3, 4]) assert.equal((await server.push("alice", { n }, 1)).seqs.alice, n);
    assert.equal((await server.publish("room-1", { r: 2 }, 1)).offset, 2);
    assert.equal((await server.publish("room-1", { r: 3 }, 1)).offset, 3);
    proxy.restore();
    await page.waitFor(
      async () => (await page.durable()).length >= 4 && (await page.publications("room-1")).length >= 4,
      "pushes 2 to 4 and room-1 #2 and #3 after the reconnect",
      // The SDK's backoff (500 ms doubling, full jitter) may wait a few seconds after failed attempts.
      WAIT_MS * 2,
    );
    assert.equal(await page.text("state"), "connected");
    assert.equal(await page.text("device"), device);
    const recovered = (await page.events("subscribed")).filter((e) => e.topic === "room-1" && e.since === "1");
    assert.deepEqual(
      recovered.map((e) => [e.recovery, e.offset]),
      [["complete", "3"]],
    );
    await ackedAt(server, "alice", device, 4);
  });

  await step("after a kick (4207) the SDK stops; Connect again resumes from the acked position", async () => {
    const kicked = await server.kick("alice");
    assert.ok(kicked.kicked >= 1, `kick answered ${JSON.stringify(kicked)}`);
    await page.waitFor(async () => (await page.text("state")) === "closed", "the state closed");
    const last = (await page.events("disconnected")).at(-1);
    assert.deepEqual([last.code, last.reconnecting], ["4207", "false"]);
    assert.match(last.text, /kicked/);
    // While kicked: a person decides to connect again, the SDK does not.
    assert.equal((await server.push("alice", { n: 5 }, 1)).seqs.alice, 5);
    assert.equal((await server.push("alice", { n: 6 }, 1)).seqs.alice, 6);
    assert.equal((await server.publish("room-1", { r: 4 }, 1)).offset, 4);
    assert.equal((await server.presence("alice")).online, false, "nothing reconnected after the kick");
    await page.click("connect");
    await page.waitFor(
      async () => (await page.durable()).length >= 6 && (await page.publications("room-1")).length >= 5,
      "pushes 5 and 6 and room-1 #4 after Connect",
    );
    assert.equal(await page.text("device"), device);
    // The page subscribes its topics again with `since` = the last offset it showed.
    const recovered = (await page.events("subscribed")).filter((e) => e.topic === "room-1" && e.since === "3");
    assert.deepEqual(
      recovered.map((e) => [e.recovery, e.offset]),
      [["complete", "4"]],
    );
    await ackedAt(server, "alice", device, 6);
  });

  await step("showed every push and publication exactly once, in order", async () => {
    const durable = await page.durable();
    assert.deepEqual(
      durable.map((p) => [p.seq, p.payload]),
      [1, 2, 3, 4, 5, 6].map((n) => [String(n), `{"n":${n}}`]),
    );
    assert.equal(new Set(durable.map((p) => p.msgId)).size, durable.length, "one message id per push");
    assert.equal((await page.pushes()).filter((p) => p.qos === "0").length, 1);
    assert.deepEqual(
      (await page.publications("room-1")).filter((p) => p.offset !== "0").map((p) => [p.offset, p.payload]),
      [1, 2, 3, 4].map((r) => [String(r), `{"r":${r}}`]),
    );
    assert.equal((await page.publications("news")).length, 2);
    assert.deepEqual(page.errors, [], "no uncaught error in the page");
    console.log(`screenshot: ${await screenshot(page.page, "example-page")}`);
  });

  await step("after a reload, the device id and the acked position come back from localStorage", async () => {
    await page.reload();
    assert.equal(await page.text("state"), "idle");
    assert.equal((await page.items("messages")).length, 0);
    await until(async () => !(await server.presence("alice")).online, "the server to see the unloaded page go");
    assert.equal((await server.push("alice", { n: 7 }, 1)).seqs.alice, 7);
    assert.equal((await server.publish("room-1", { r: 5 }, 1)).offset, 5);
    await page.fill("url", proxy.wsUrl);
    await page.fill("token", token);
    await page.click("connect");
    await page.waitFor(async () => (await page.durable()).length >= 1, "push 7 after the reload");
    assert.equal(await page.text("device"), device);
    // The reloaded page forgot its topics: the person subscribes again after the last offset seen.
    await page.fill("topic", "room-1");
    await page.fill("since", "4");
    await page.click("subscribe");
    await page.waitFor(async () => (await page.publications("room-1")).length >= 1, "room-1 #5 recovered");
    // Only what came after the acked seq: 1 to 6 are not shown again.
    assert.deepEqual(
      (await page.durable()).map((p) => [p.seq, p.payload]),
      [["7", '{"n":7}']],
    );
    assert.deepEqual(
      (await page.publications("room-1")).map((p) => [p.offset, p.payload]),
      [["5", '{"r":5}']],
    );
    await ackedAt(server, "alice", device, 7);
    assert.deepEqual(page.errors, [], "no uncaught error in the page");
  });
});

/** Waits until the presence API shows `device` of `user` acked up to `seq`. */
async function ackedAt(server, user, device, seq) {
  let devices = [];
  await until(
    async () => {
      devices = (await server.presence(user)).devices;
      return devices.some((d) => d.device === device && d.acked === seq);
    },
    `device ${device} acked at ${seq}`,
  ).catch((e) => {
    e.message += `; presence devices: ${JSON.stringify(devices)}`;
    throw e;
  });
}
