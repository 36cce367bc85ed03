/** The parts without I/O: backoff, the JSON decoder, the topic table, stores, codes, errors. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { Backoff } from "../src/backoff.js";
import { Emitter } from "../src/emitter.js";
import { decode, DecodeError, fromBase64, toBase64 } from "../src/frames.js";
import { codeGroup, LocalStorageStore, shouldReconnect, TetherClient, TetherError } from "../src/index.js";
import { tokenSubject } from "../src/store.js";
import { Topics } from "../src/topics.js";

/** A deterministic random source cycling through `values`. */
function cycle(values: number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length]!;
}

test("backoff ceilings double up to the maximum, and a reset starts over", () => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0);
  const ceilings = [];
  for (let i = 0; i < 6; i++) {
    ceilings.push(b.ceiling());
    assert.equal(b.next(), ceilings.at(-1), "a draw of 0 gives the ceiling");
  }
  assert.deepEqual(ceilings, [100, 200, 400, 800, 1000, 1000]);
  b.reset();
  assert.equal(b.ceiling(), 100);
  for (let i = 0; i < 2000; i++) b.next();
  assert.equal(b.ceiling(), 1000, "no overflow after many attempts");
});

test("backoff delays are jittered over the whole window and never below the server's retry_after", () => {
  const delays = [];
  for (let i = 0; i < 200; i++) {
    const b = new Backoff({ initialMs: 100, maxMs: 1000 });
    for (let j = 0; j < 3; j++) b.next();
    const d = b.next(); // ceiling 800 ms
    assert.ok(d >= 0 && d <= 800, String(d));
    delays.push(d);
  }
  assert.ok(delays.some((d) => d < 200) && delays.some((d) => d > 600), "spread over the window");
  const floored = new Backoff({ initialMs: 100, maxMs: 1000 }, () => 0.99);
  assert.equal(floored.next(5000), 5000, "retry_after wins, even above the maximum");
});

test("a dispatcher's backoff replaces the policy, clamped, keeping the attempt count", () => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000 }, cycle([0, 1]));
  b.next();
  b.adopt(40, 100, 0.25);
  assert.equal(b.ceiling(), 80, "attempt 1 of the new parameters");
  b.next();
  for (let i = 0; i < 10; i++) {
    const d = b.next();
    assert.ok(d >= 75 && d <= 100, String(d)); // a quarter of the 100 ms ceiling is random
  }
  b.adopt(-5, -1, Number.NaN);
  assert.equal(b.ceiling(), 1, "broken values cannot make the client spin");
});

test("the decoder reads the spec's examples into typed frames", () => {
  const push = decode('{"op":"push","id":0,"app":"demo","msg_id":"18446744073709551615","seq":18,"qos":1,"created_ms":1763700000042,"payload_base64":"AP9oaQ=="}');
  assert.deepEqual(push, {
    op: "push",
    id: 0,
    body: { app: "demo", msgId: "18446744073709551615", seq: 18, qos: 1, createdMs: 1763700000042, payload: { kind: "binary", bytes: new Uint8Array([0, 255, 104, 105]) } },
  });
  const numeric = decode('{"op":"push","app":"demo","msg_id":123,"payload":null}');
  assert.equal(numeric.op === "push" && numeric.body.msgId, "123", "a numeric msg_id is accepted");
  assert.deepEqual(numeric.op === "push" && numeric.body.payload, { kind: "json", value: null }, "a null payload is the JSON null");
  assert.deepEqual(decode('{"op":"subscribed","id":5,"app":"demo","topic":"room-1","offset":42}'), {
    op: "subscribed",
    id: 5,
    app: "demo",
    topic: "room-1",
    offset: 42,
    recovery: "live",
  });
  assert.deepEqual(decode('{"op":"disconnect","id":0,"code":4001,"reason":"slow","retry_after_ms":250,"reconnect":"retry"}'), {
    op: "disconnect",
    id: 0,
    code: 4001,
    reason: "slow",
    retryAfterMs: 250,
  });
});

test("the decoder refuses what the spec calls malformed, naming the field", () => {
  const cases: [string, RegExp][] = [
    ["not json", /not JSON/],
    ["[1]", /not a JSON object/],
    ['{"op":"warp"}', /unknown op/],
    ['{"op":"push","app":"a","msg_id":"1"}', /neither "payload"/],
    ['{"op":"push","app":"a","msg_id":"1","payload":1,"payload_base64":"AA=="}', /both/],
    ['{"op":"push","app":"a","msg_id":"x1","payload":1}', /msg_id/],
    ['{"op":"connected","conn_id":1,"node":"n","heartbeat_ms":-1,"max_frame":1}', /heartbeat_ms/],
    ['{"op":"subscribed","app":"a","topic":"t","offset":1,"recovery":"maybe"}', /recovery/],
    ['{"op":"push","app":"a","msg_id":"1","payload_base64":"!!"}', /base64/],
  ];
  for (const [text, why] of cases) {
    assert.throws(() => decode(text), (e: Error) => e instanceof DecodeError && why.test(e.message), text);
  }
});

test("base64 round-trips every byte, and unpadded input decodes", () => {
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  assert.deepEqual(fromBase64(toBase64(all)), all);
  assert.deepEqual(fromBase64("AQI"), new Uint8Array([1, 2]));
});

test("the topic table drops resent publications and recovers a gap left by a re-applied subscription", () => {
  const topics = new Topics();
  const req = topics.subscribe("demo", "t", undefined, undefined);
  topics.sentSubscribe(1, req);
  const { event } = topics.subscribed(1, "demo", "t", 4, "live");
  assert.equal(event?.type, "subscribed");
  const pub = (offset: number) => ({ app: "demo", topic: "t", offset, msgId: "1", createdMs: 0, payload: { kind: "json" as const, value: 0 } });
  assert.equal(topics.publication(pub(4)), false, "at or below the subscribe's offset: already covered");
  assert.equal(topics.publication(pub(5)), true);
  assert.equal(topics.publication(pub(5)), false, "a resend");
  assert.equal(topics.publication(pub(0)), true, "live-only publications are never duplicates");

  // A reconnect: the client's own subscription is sent again with since = 5.
  const again = topics.connectionStarted();
  assert.deepEqual(again, [{ app: "demo", topic: "t", since: 5, token: undefined }]);

  // The business's subscription, re-applied at a later offset than the client holds.
  const server = new Topics();
  assert.equal(server.subscribed(0, "demo", "s", 2, "live").event?.type, "subscribed");
  assert.equal(server.publication({ ...pub(3), topic: "s" }), true);
  assert.deepEqual(server.connectionStarted(), [], "the server re-applies it itself");
  const reapplied = server.subscribed(0, "demo", "s", 7, "live");
  assert.deepEqual(reapplied, { resend: { app: "demo", topic: "s", since: 3, token: undefined } });
});

test("a subscribe refused as busy (4301) is retried; any other refusal forgets the topic", () => {
  const topics = new Topics();
  topics.sentSubscribe(1, topics.subscribe("demo", "busy", undefined, "tok"));
  const busy = topics.failed(1, 4301, "busy");
  assert.equal(busy?.event?.type === "subscribeFailed" && busy.event.retrying, true);
  assert.deepEqual(busy?.retry, { app: "demo", topic: "busy", since: undefined, token: "tok" });
  topics.sentSubscribe(2, topics.subscribe("demo", "no", undefined, undefined));
  const refused = topics.failed(2, 4305, "forbidden");
  assert.equal(refused?.event?.type === "subscribeFailed" && refused.event.retrying, false);
  assert.equal(topics.lastOffset("demo", "no"), undefined);
  assert.deepEqual(
    topics.connectionStarted().map((r) => r.topic),
    ["busy"],
  );
  assert.equal(topics.failed(99, 4300, "not ours"), undefined);
});

test("the localStorage store prefixes its keys and survives a storage that throws", () => {
  const map = new Map<string, string>();
  const store = new LocalStorageStore({ getItem: (k) => map.get(k) ?? null, setItem: (k, v) => void map.set(k, v) });
  store.set("seq/demo/alice", "7");
  assert.deepEqual([...map], [["tether:seq/demo/alice", "7"]]);
  assert.equal(store.get("seq/demo/alice"), "7");
  const broken = new LocalStorageStore({
    getItem: () => {
      throw new Error("SecurityError");
    },
    setItem: () => {
      throw new Error("QuotaExceededError");
    },
  });
  assert.equal(broken.get("x"), null);
  assert.doesNotThrow(() => broken.set("x", "1"));
  assert.throws(() => new LocalStorageStore(), /no localStorage/); // Node has none
});

test("a token's subject is read without verifying it, and anything else gives none", () => {
  const claims = Buffer.from(JSON.stringify({ sub: "ålice", exp: 1 })).toString("base64url");
  assert.equal(tokenSubject(`h.${claims}.s`), "ålice");
  assert.equal(tokenSubject("opaque"), undefined);
  assert.equal(tokenSubject("a.%%%.c"), undefined);
  assert.equal(tokenSubject(`h.${Buffer.from('{"sub":5}').toString("base64url")}.s`), undefined);
});

test("code groups decide reconnects, and errors name the code and what the client does", () => {
  assert.deepEqual([4001, 4101, 4204, 4305, 1006, 4999].map(codeGroup), ["reconnect", "redispatch", "stop", "request", "reconnect", "reconnect"]);
  assert.deepEqual([4001, 4101, 4204, 1006].map(shouldReconnect), [true, true, false, true]);
  // WebSocket-level refusals: what was sent would be refused again.
  assert.deepEqual([1002, 1003, 1007, 1009, 1000, 1001, 1011].map(shouldReconnect), [false, false, false, false, true, true, true]);
  const e = new TetherError("rejected", "connection lost: kicked", 4207, false);
  assert.equal(e.message, "connection lost: kicked (code 4207, the client does not reconnect)");
  assert.equal(e.detail, "connection lost: kicked");
  assert.equal(new TetherError("request", "busy", 4301).message, "busy (code 4301)");
});

test("frames that arrive in the same read as connected are handed over after it, none lost", async () => {
  // A socket that, like `ws` reading one TCP segment, emits `connected` and a backlog in one go.
  class OneRead {
    readyState = 0;
    onopen: ((ev: unknown) => void) | null = null;
    onmessage: ((ev: { data: unknown }) => void) | null = null;
    onclose: ((ev: { code: number; reason: string }) => void) | null = null;
    onerror: ((ev: unknown) => void) | null = null;
    constructor(_url: string) {
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.({});
      }, 0);
    }
    send(data: string): void {
      const frame = JSON.parse(data);
      if (frame.op !== "connect") return;
      const frames = [
        { op: "connected", id: frame.id, conn_id: 1, node: "n", heartbeat_ms: 30000, max_frame: 65536, bindings: [{ app: "demo", user: "u" }] },
        { op: "push", app: "demo", msg_id: "1", seq: 1, qos: 1, payload: 1 },
        { op: "push", app: "demo", msg_id: "2", seq: 2, qos: 1, payload: 2 },
      ];
      for (const f of frames) this.onmessage?.({ data: JSON.stringify(f) });
    }
    close(): void {
      this.readyState = 3;
    }
  }
  const client = new TetherClient({ url: "ws://fake/ws", bindings: [{ app: "demo", token: "t" }], WebSocket: OneRead });
  const seqs: number[] = [];
  client.on("message", (m) => seqs.push(m.seq));
  await client.connect();
  client.close();
  assert.deepEqual(seqs, [1, 2]);
});

test("listeners are removed by on()'s return value and off(), once() fires once, and a throwing one does not stop the others", () => {
  class Probe extends Emitter<{ tick: number }> {
    fire(n: number): void {
      this.emit("tick", n);
    }
  }
  const probe = new Probe();
  const seen: string[] = [];
  const remove = probe.on("tick", (n) => seen.push(`on ${n}`));
  probe.once("tick", (n) => seen.push(`once ${n}`));
  const thrower = () => {
    throw new Error("listener bug");
  };
  probe.on("tick", thrower);
  probe.on("tick", (n) => seen.push(`after ${n}`));
  const errors: unknown[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => errors.push(args);
  try {
    probe.fire(1);
    remove();
    probe.off("tick", thrower);
    probe.fire(2);
  } finally {
    console.error = original;
  }
  assert.deepEqual(seen, ["on 1", "once 1", "after 1", "after 2"]);
  assert.equal(errors.length, 1, "the exception is reported once");
});
