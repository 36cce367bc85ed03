/**
 * The example page as the tests drive it: fields and buttons by id, and the lists it shows,
 * read back from their items' data-* attributes (../app.js writes them). Also the structure
 * of a case: steps that stop at the first failure, and cleanups run last-in first-out.
 */

import assert from "node:assert/strict";

import { screenshot, until, WAIT_MS } from "./harness.js";

/** The example page in its own browser context (its own localStorage), driven by id. */
export class ExamplePage {
  errors = [];
  console = [];

  constructor(context, page) {
    this.context = context;
    this.page = page;
  }

  static async open(browser, url) {
    const context = await browser.createBrowserContext();
    const page = await context.newPage();
    const example = new ExamplePage(context, page);
    page.setDefaultTimeout(WAIT_MS);
    page.on("pageerror", (e) => example.errors.push(String(e)));
    page.on("console", (m) => {
      if (example.console.length < 500) example.console.push(`${m.type()}: ${m.text()}`);
    });
    await page.setViewport({ width: 1200, height: 900 });
    const res = await page.goto(url, { waitUntil: "load", timeout: WAIT_MS });
    assert.equal(res?.status(), 200, `${url} answered ${res?.status()}`);
    return example;
  }

  /** Reloads the page: its client goes with it, its localStorage stays. */
  async reload() {
    const res = await this.page.reload({ waitUntil: "load", timeout: WAIT_MS });
    assert.equal(res?.status(), 200, `reload answered ${res?.status()}`);
  }

  async fill(id, value) {
    await this.page.$eval(
      `#${id}`,
      (el, v) => {
        el.value = v;
        el.dispatchEvent(new Event("input", { bubbles: true }));
      },
      value,
    );
  }

  click(id) {
    return this.page.click(`#${id}`);
  }

  text(id) {
    return this.page.$eval(`#${id}`, (el) => el.textContent.trim());
  }

  /** The items of a list: their data-* attributes and `text`. */
  items(listId) {
    return this.page.$$eval(`#${listId} li`, (lis) => lis.map((li) => ({ ...li.dataset, text: li.textContent })));
  }

  async pushes() {
    return (await this.items("messages")).filter((m) => m.seq !== undefined);
  }

  /** The qos 1 pushes shown. */
  async durable() {
    return (await this.pushes()).filter((p) => p.qos !== "0");
  }

  async publications(topic) {
    return (await this.items("messages")).filter((m) => m.topic === topic);
  }

  async events(kind) {
    return (await this.items("events")).filter((e) => e.event === kind);
  }

  /** Waits until `check()` is truthy; on timeout the error shows what the page shows and logged. */
  async waitFor(check, what, timeoutMs = WAIT_MS) {
    try {
      return await until(check, what, timeoutMs);
    } catch (e) {
      e.message += `\n${await this.describe()}`;
      throw e;
    }
  }

  async describe() {
    const lines = async (id) => (await this.items(id).catch(() => [])).map((i) => `  ${i.text}`).join("\n");
    return [
      `state: ${await this.text("state").catch(() => "?")}`,
      `messages:\n${await lines("messages")}`,
      `events:\n${await lines("events")}`,
      `console:\n${this.console.slice(-30).map((l) => `  ${l}`).join("\n")}`,
      `page errors: ${JSON.stringify(this.errors)}`,
    ].join("\n");
  }

  /** Keeps a screenshot as `name`.png (the path is printed), then closes the context. */
  async close(name) {
    try {
      console.log(`screenshot: ${await screenshot(this.page, name)}`);
    } finally {
      await this.context.close();
    }
  }
}

/** Waits until the page's client connected or gave up, and checks it is `expected`. */
export async function settled(page, expected) {
  const state = await page.waitFor(async () => {
    const s = await page.text("state");
    return (s === "connected" || s === "closed") && s;
  }, "the client to connect or give up");
  if (state !== expected) assert.fail(`the client is ${state}, not ${expected}:\n${await page.describe()}`);
}

/**
 * Steps of a case as subtests, run in order; after a failed step the rest are skipped (they
 * would fail for the same reason).
 */
export function steps(t) {
  let failed;
  return (title, fn) =>
    t.test(title, { skip: failed && `an earlier step failed: ${failed}` }, async () => {
      try {
        await fn();
      } catch (e) {
        failed = title;
        throw e;
      }
    });
}

/** Cleanups of a case, run last-in first-out after it (each bounded by the harness's waits). */
export function cleanups(t) {
  const stack = [];
  t.after(async () => {
    for (const fn of stack.reverse()) {
      try {
        await fn();
      } catch (e) {
        console.error(`cleanup: ${e}`);
      }
    }
  });
  return (fn) => stack.push(fn);
}
