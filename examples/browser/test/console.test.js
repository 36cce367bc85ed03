/**
 * The web console that `tether serve` itself serves at `/console`, in headless Chromium: a
 * wrong admin key is refused; the right one shows the node, and the node list (all-in-one: this
 * node, serving and alive, then draining once drained); the example page connected as a
 * user shows up in the connections by app and transport; a push sent from the console's form
 * reaches that page; the user lookup shows its connection, its device's acked position and
 * the message in its inbox; the rate charts count the push (from successive reads of
 * /metrics); drain asks for a confirmation first. The page runs under its own strict
 * Content-Security-Policy, and any violation or page error fails the case. The screenshot's
 * path is printed.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { API_KEY, APP, haveTools, launchChromium, screenshot, Server, StaticSite, until, WAIT_MS } from "./harness.js";
import { cleanups, ExamplePage, steps } from "./page.js";

const ADMIN_KEY = "console-admin-key-0123456789";
/** The console polls every 2 s; a change shows within two polls, plus a busy machine's slack. */
const POLL_WAIT_MS = WAIT_MS;

/** The console page, driven by id; what it logged and threw is kept for the failure message. */
class ConsolePage {
  errors = [];
  console = [];

  static async open(browser, url) {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    const c = new ConsolePage();
    c.context = context;
    c.page = page;
    page.setDefaultTimeout(WAIT_MS);
    page.on("pageerror", (e) => c.errors.push(String(e)));
    page.on("console", (m) => {
      if (c.console.length < 500) c.console.push(`${m.type()}: ${m.text()}`);
    });
    await page.setViewport({ width: 1200, height: 1000 });
    c.response = await page.goto(url, { waitUntil: "load", timeout: WAIT_MS });
    return c;
  }

  async fill(id, value) {
    await this.page.$eval(`#${id}`, (el, v) => {
      el.value = v;
    }, value);
  }

  click(id) {
    return this.page.click(`#${id}`);
  }

  text(id) {
    return this.page.$eval(`#${id}`, (el) => el.textContent.trim());
  }

  visible(id) {
    return this.page.$eval(`#${id}`, (el) => !el.hidden && el.getClientRects().length > 0);
  }

  rows(tableId) {
    return this.page.$$eval(`#${tableId} tbody tr`, (trs) => trs.map((tr) => ({ ...tr.dataset, text: tr.textContent })));
  }

  /** The legend of the chart titled `title`: line label -> its peak rate in the window. */
  peaks(title) {
    return this.page.$$eval(`figure[data-chart="${title}"] .legend span`, (spans) =>
      Object.fromEntries(spans.map((s) => [s.dataset.line, Number(s.dataset.peak)])),
    );
  }

  /** The points of the chart's lines (one polyline each). */
  lines(title) {
    return this.page.$$eval(`figure[data-chart="${title}"] polyline`, (ls) => ls.map((l) => l.getAttribute("points")));
  }

  async waitFor(check, what, timeoutMs = POLL_WAIT_MS) {
    try {
      return await until(check, what, timeoutMs);
    } catch (e) {
      e.message += `\nconsole:\n${this.console.slice(-30).join("\n")}\npage errors: ${JSON.stringify(this.errors)}`;
      throw e;
    }
  }

  async close(name) {
    try {
      console.log(`screenshot: ${await screenshot(this.page, name)}`);
    } finally {
      await this.context.close();
    }
  }
}

test("the web console logs in with the admin key, shows a connection, pushes to it, looks the user up and drains with a confirmation", { timeout: 180_000 }, async (t) => {
  if (!haveTools(t)) return;
  const cleanup = cleanups(t);
  const server = await Server.start({ extra: `[admin]\nkey = "${ADMIN_KEY}"` });
  cleanup(() => server.stop());
  const site = await StaticSite.start();
  cleanup(() => site.close());
  const chromium = await launchChromium();
  cleanup(() => chromium.close());
  const client = await ExamplePage.open(chromium, site.pageUrl());
  cleanup(() => client.close("console-client-page"));
  const ui = await ConsolePage.open(chromium, `${server.httpUrl}/console`);
  cleanup(() => ui.close("console"));
  const step = steps(t);
  let device = "";

  await step("serves the page with a strict policy, from the binary, at /console", async () => {
    assert.equal(ui.response?.status(), 200);
    assert.equal(new URL(ui.page.url()).pathname, "/console/", "/console leads to /console/");
    const headers = ui.response.headers();
    assert.match(headers["content-security-policy"], /script-src 'self';/);
    assert.doesNotMatch(headers["content-security-policy"], /unsafe/);
    assert.equal(headers["x-content-type-options"], "nosniff");
    assert.equal(headers["cache-control"], "no-cache");
    assert.equal(await ui.visible("console"), false, "nothing shows before logging in");
  });

  await step("refuses a wrong admin key", async () => {
    await ui.fill("login-key", "not-the-admin-key-000");
    await ui.click("login");
    await ui.waitFor(async () => (await ui.text("login-error")).includes("403"), "the refusal shown");
    assert.equal(await ui.visible("console"), false);
  });

  await step("logs in with the admin key and shows the node", async () => {
    await ui.fill("login-key", ADMIN_KEY);
    await ui.click("login");
    await ui.waitFor(() => ui.visible("console"), "the console shown");
    // The console shows before its first read of the node's stats has come back.
    await ui.waitFor(async () => (await ui.text("node-id")) !== "", "the node's stats shown");
    assert.equal(await ui.text("node-id"), "browser-test");
    assert.equal(await ui.text("node-ready"), "ready");
    assert.equal(await ui.text("status"), "ready");
    assert.equal(await ui.text("store-backend"), "embedded");
    assert.equal(await ui.page.evaluate(() => sessionStorage.getItem("tether.console.admin")), ADMIN_KEY);
  });

  await step("lists the node it runs on, all-in-one, as the one node: serving, alive, its endpoints", async () => {
    const rows = await ui.waitFor(async () => {
      const r = await ui.rows("nodes");
      return r.length > 0 && r;
    }, "the node list shown");
    assert.deepEqual(rows.map((r) => [r.node, r.state, r.alive, r.connections]), [["browser-test", "serving", "true", "0"]]);
    assert.ok(rows[0].endpoints.split(" ").includes(server.wsUrl), `${rows[0].endpoints} has ${server.wsUrl}`);
    assert.match(rows[0].text, /\(this node\)/);
    assert.equal(await ui.text("nodes-total"), "1");
  });

  await step("shows a client's connection by app and transport once it connects", async () => {
    await client.fill("url", server.wsUrl);
    await client.fill("token", await server.token("erin"));
    await client.click("connect");
    await client.waitFor(async () => (await client.text("state")) === "connected", "the client connected");
    device = await client.text("device");
    const row = await ui.waitFor(async () => (await ui.rows("by-app")).find((r) => r.app === APP && r.ws === "1"), "the demo app with one ws connection");
    assert.equal(row.tcp, "0");
    assert.equal(row.mqtt, "0");
    assert.equal(await ui.text("conn-total"), "1");
    // The node list counts what the node last announced (every 5 s by default).
    await ui.waitFor(async () => (await ui.rows("nodes"))[0]?.connections === "1", "the node list's count at 1", 2 * WAIT_MS);
  });

  await step("refuses a push with a wrong app key, and says so", async () => {
    await ui.fill("app-id", APP);
    await ui.fill("app-key", "not-the-api-key-0000");
    await ui.page.select("#send-kind", "push");
    await ui.fill("send-target", "erin");
    await ui.click("send");
    await ui.waitFor(async () => (await ui.text("send-result")).startsWith("refused: 401"), "the refusal shown");
    assert.equal((await client.pushes()).length, 0);
  });

  await step("pushes from the form with the app's API key, and the client receives it", async () => {
    await ui.fill("app-id", APP);
    await ui.fill("app-key", API_KEY);
    await ui.page.select("#send-kind", "push");
    await ui.fill("send-target", "erin");
    await ui.page.select("#send-qos", "1");
    await ui.fill("send-payload", '{"from":"console"}');
    await ui.click("send");
    await ui.waitFor(async () => (await ui.text("send-result")).startsWith("sent:"), "the push answered");
    assert.match(await ui.text("send-result"), /"erin":1/);
    const pushes = await client.waitFor(async () => {
      const p = await client.pushes();
      return p.length >= 1 && p;
    }, "the push at the client");
    assert.deepEqual(pushes.map((p) => [p.qos, p.seq, p.payload]), [["1", "1", '{"from":"console"}']]);
  });

  await step("looks the user up: its connection, its device's acked position, its inbox", async () => {
    await ui.fill("lookup-user", "erin");
    // The client acks on its own; look again until the ack is in.
    await ui.waitFor(async () => {
      await ui.click("lookup");
      await new Promise((r) => setTimeout(r, 200));
      return (await ui.rows("lookup-devices")).some((d) => d.device === device && d.acked === "1");
    }, `device ${device} acked at 1`);
    assert.deepEqual(
      (await ui.rows("lookup-connections")).map((c) => [c.device, c.transport]),
      [[device, "ws"]],
    );
    const messages = await ui.rows("lookup-messages");
    assert.deepEqual(messages.map((m) => m.seq), ["1"]);
    assert.match(messages[0].text, /\{"from":"console"\}/);
    assert.equal(await ui.text("lookup-head"), "1");
  });

  await step("charts the push rate from successive reads of /metrics", async () => {
    // The push was counted between two reads: a positive rate while it is in the window.
    await ui.waitFor(async () => (await ui.peaks("pushes and publishes")).pushes > 0, "a positive push rate");
    await ui.waitFor(async () => (await ui.peaks("deliveries")).pushes > 0, "a positive push delivery rate");
    // The pushes line is drawn from the read before the push on, a point per read.
    await ui.waitFor(async () => (await ui.lines("pushes and publishes"))[0].split(" ").length >= 2, "the pushes line drawn");
    assert.match(await ui.text("store-fsync"), /ms mean|no fsync|not exposed/);
    assert.notEqual(await ui.text("store-size"), "n/a");
  });

  await step("keeps a screenshot of the console with the connection and the charts", async () => {
    console.log(`screenshot: ${await screenshot(ui.page, "console-connected")}`);
  });

  await step("drain asks first: cancel leaves the node ready, confirm drains it", async () => {
    await ui.click("drain");
    assert.equal(await ui.page.$eval("#drain-dialog", (d) => d.open), true, "the confirmation is open");
    assert.equal(await ui.text("drain-node"), "browser-test");
    await ui.click("drain-cancel");
    assert.equal(await ui.page.$eval("#drain-dialog", (d) => d.open), false);
    assert.equal((await fetch(`${server.httpUrl}/readyz`)).status, 200, "cancel drained nothing");
    await ui.click("drain");
    await ui.click("drain-confirm");
    await ui.waitFor(async () => (await ui.text("drain-result")).startsWith("draining:"), "the drain answered");
    await ui.waitFor(async () => (await ui.text("status")) === "draining", "the node shown draining");
    assert.equal((await fetch(`${server.httpUrl}/readyz`)).status, 503);
    // The drain is announced at once: the node list shows it.
    await ui.waitFor(async () => (await ui.rows("nodes"))[0]?.state === "draining", "the node listed as draining");
    assert.equal((await ui.rows("nodes"))[0].alive, "true");
  });

  await step("ran without a policy violation or a page error", async () => {
    assert.deepEqual(ui.errors, []);
    const violations = ui.console.filter((l) => /Content Security Policy|Refused to/i.test(l));
    assert.deepEqual(violations, []);
  });
});
