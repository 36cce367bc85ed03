/** The parts of the SSE transport without I/O: the event-stream parser, the stream's URL and query, the fallback policy. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { TetherError } from "../src/errors.js";
import { EventStreamError, EventStreamParser, type StreamEvent } from "../src/eventstream.js";
import { Fallback } from "../src/fallback.js";
import { sseUrlOf, streamRequest } from "../src/sse.js";

/** Parses `chunks` in order; the events and comments seen. */
function parse(chunks: string[], maxLength?: number): { events: StreamEvent[]; comments: string[]; parser: EventStreamParser } {
  const events: StreamEvent[] = [];
  const comments: string[] = [];
  const parser = new EventStreamParser((e) => events.push(e), (c) => comments.push(c), maxLength);
  for (const c of chunks) parser.feed(c);
  return { events, comments, parser };
}

/** What tether writes (section 14.4), with a comment, a retry and a multi-line event added. */
const STREAM = [
  "event: session",
  "data: dGV0aGVyLTE.q2X1b5mWm0g4Hk2zZJ7zQA",
  "",
  'data: {"op":"connected","id":0,"conn_id":7}',
  "",
  ":",
  "id: demo:18,demo:room-1:41",
  'data: {"op":"push","seq":18,"payload":{"text":"hé ☃"}}',
  "",
  ": keep-alive",
  "retry: 1500",
  "data: first line",
  "data:second line",
  "data",
  "",
  "",
].join("\n");

const EXPECTED: StreamEvent[] = [
  { type: "session", data: "dGV0aGVyLTE.q2X1b5mWm0g4Hk2zZJ7zQA", lastEventId: "" },
  { type: "message", data: '{"op":"connected","id":0,"conn_id":7}', lastEventId: "" },
  { type: "message", data: '{"op":"push","seq":18,"payload":{"text":"hé ☃"}}', lastEventId: "demo:18,demo:room-1:41" },
  { type: "message", data: "first line\nsecond line\n", lastEventId: "demo:18,demo:room-1:41" },
];

test("the event-stream parser reads a stream whole: session, frames, ids that carry over, comments, retry, multi-line data", () => {
  const { events, comments, parser } = parse([STREAM]);
  assert.deepEqual(events, EXPECTED);
  assert.deepEqual(comments, ["", " keep-alive"]);
  assert.equal(parser.retryMs, 1500);
  assert.equal(parser.lastEventId, "demo:18,demo:room-1:41");
});

test("the event-stream parser gives the same events for chunks split anywhere, down to one character each", () => {
  for (let i = 0; i <= STREAM.length; i++) {
    for (let j = i; j <= STREAM.length; j += 7) {
      const { events } = parse([STREAM.slice(0, i), STREAM.slice(i, j), STREAM.slice(j)]);
      assert.deepEqual(events, EXPECTED, `split at ${i} and ${j}`);
    }
  }
  assert.deepEqual(parse([...STREAM]).events, EXPECTED, "one character at a time");
});

test("the event-stream parser takes CRLF, LF and CR line ends, mixed, and a CRLF split between chunks", () => {
  for (const eol of ["\r\n", "\n", "\r"]) {
    const text = STREAM.split("\n").join(eol);
    assert.deepEqual(parse([text]).events, EXPECTED, JSON.stringify(eol));
    for (let i = 0; i <= text.length; i++) assert.deepEqual(parse([text.slice(0, i), text.slice(i)]).events, EXPECTED, `${JSON.stringify(eol)} split at ${i}`);
  }
  // A CR ending one chunk and an LF starting the next are one line end, not two (which would
  // dispatch the event early, and here lose nothing but the second data line).
  assert.deepEqual(parse(["data: a\r", "\ndata: b\r", "\n\r", "\n"]).events, [{ type: "message", data: "a\nb", lastEventId: "" }]);
  assert.deepEqual(parse(["data: a\r\rdata: b\n\r\n"]).events, [
    { type: "message", data: "a", lastEventId: "" },
    { type: "message", data: "b", lastEventId: "" },
  ]);
  assert.deepEqual(parse(["data: a\r", "", "\r"]).events, [{ type: "message", data: "a", lastEventId: "" }], "an empty chunk between CR and CR");
});

test("the event-stream parser follows the standard's field rules", () => {
  const cases: [string, StreamEvent[]][] = [
    ["data:x\n\n", [{ type: "message", data: "x", lastEventId: "" }]],
    ["data:  two spaces\n\n", [{ type: "message", data: " two spaces", lastEventId: "" }]],
    ["data\n\n", [{ type: "message", data: "", lastEventId: "" }]],
    ["data: a:b: c\n\n", [{ type: "message", data: "a:b: c", lastEventId: "" }]],
    // No data: nothing is dispatched, and the type does not leak into the next event.
    ["event: x\n\ndata: y\n\n", [{ type: "message", data: "y", lastEventId: "" }]],
    // The id holds without data, is cleared by an empty id, and an id with NUL is ignored.
    ["id: 1\n\ndata: a\n\nid\ndata: b\n\nid: 2\u0000\ndata: c\n\n", [
      { type: "message", data: "a", lastEventId: "1" },
      { type: "message", data: "b", lastEventId: "" },
      { type: "message", data: "c", lastEventId: "" },
    ]],
    ["unknown: 1\nData: 2\ndata: 3\n\n", [{ type: "message", data: "3", lastEventId: "" }]],
    // An event the stream does not finish is discarded.
    ["data: whole\n\ndata: cut", [{ type: "message", data: "whole", lastEventId: "" }]],
  ];
  for (const [text, expected] of cases) assert.deepEqual(parse([text]).events, expected, JSON.stringify(text));
  for (const [retry, expected] of [["retry: 20", 20], ["retry: 2x", undefined], ["retry: -1", undefined], ["retry:", undefined]] as const) {
    assert.equal(parse([`${retry}\n`]).parser.retryMs, expected, retry);
  }
});

test("text split inside a UTF-8 character reaches the parser whole through a streaming TextDecoder", () => {
  const bytes = new TextEncoder().encode(STREAM);
  for (let i = 0; i <= bytes.length; i++) {
    const decoder = new TextDecoder();
    const { events } = parse([decoder.decode(bytes.subarray(0, i), { stream: true }), decoder.decode(bytes.subarray(i), { stream: true }), decoder.decode()]);
    assert.deepEqual(events, EXPECTED, `split at byte ${i}`);
  }
  const bom = new TextDecoder().decode(new Uint8Array([0xef, 0xbb, 0xbf, ...new TextEncoder().encode("data: x\n\n")]));
  assert.deepEqual(parse([bom]).events, [{ type: "message", data: "x", lastEventId: "" }], "a leading BOM is dropped by the decoder");
});

test("the event-stream parser refuses a line or an event past its bound, even one fed in pieces", () => {
  assert.throws(() => parse(["data: " + "x".repeat(100) + "\n"], 50), EventStreamError);
  assert.throws(() => parse(Array.from({ length: 20 }, () => "xxxxxxxx"), 50), EventStreamError);
  assert.throws(() => parse(["data: 0123456789\n".repeat(10)], 50), EventStreamError);
  assert.equal(parse(["data: 0123456789\n\n".repeat(10)], 50).events.length, 10, "each event within the bound");
});

test("the stream's URL derives from the WebSocket endpoint, and its query is the connect", () => {
  assert.equal(sseUrlOf("ws://127.0.0.1:7401/ws"), "http://127.0.0.1:7401/v1/sse");
  assert.equal(sseUrlOf("wss://push.example.com/ws"), "https://push.example.com/v1/sse");
  assert.equal(sseUrlOf("wss://example.com/push/ws?x=1"), "https://example.com/push/v1/sse");
  assert.equal(sseUrlOf("ws://h:1/"), "http://h:1/v1/sse");
  assert.throws(() => sseUrlOf("not a url"));

  const one = streamRequest("http://h/v1/sse", { id: 1, device: "d 1", heartbeatMs: 0, bindings: [{ app: "demo", token: "T", last_seq: 7 }] });
  assert.equal(one.url, "http://h/v1/sse?version=1&device=d+1&app=demo&last_seq=7");
  assert.deepEqual(one.headers, { accept: "text/event-stream", authorization: "Bearer T" }, "one binding: the token in a header");
  const two = streamRequest("http://h/v1/sse", {
    id: 1,
    device: "d",
    heartbeatMs: 5000,
    bindings: [
      { app: "a", token: "T1" },
      { app: "b&c", token: "T2", last_seq: 3 },
    ],
  });
  assert.equal(two.url, "http://h/v1/sse?version=1&device=d&heartbeat_ms=5000&app=a&token=T1&app=b%26c&token=T2&last_seq=3");
  assert.equal(two.headers.authorization, undefined);
});

test("the fallback policy: N failures in a row without a code, at once when blocked or in connect()'s round, sticky once up, and a bounded retry of WebSocket", () => {
  let now = 0;
  const unanswered = new TetherError("transport", "closed with 1006", undefined, true);
  const refused = new TetherError("rejected", "drain", 4101, true);
  const make = () => new Fallback({ transports: ["websocket", "sse"], fallbackAfter: 2, retryFirstMs: 1000 }, () => now);

  const f = make();
  assert.equal(f.next(), "websocket");
  assert.equal(f.failed("websocket", unanswered, false, false), undefined, "one failure is not enough");
  assert.equal(f.failed("websocket", refused, false, false), undefined, "a code resets the count");
  assert.equal(f.failed("websocket", unanswered, false, false), undefined);
  assert.equal(f.failed("websocket", unanswered, false, false), "sse", "the second in a row: SSE on the same endpoint at once");
  // SSE failed too (the server is down): nothing sticks, but each round now tries both.
  assert.equal(f.failed("sse", unanswered, false, false), undefined);
  assert.equal(f.next(), "websocket");
  assert.equal(f.failed("websocket", unanswered, false, false), "sse");
  f.connected("sse");
  assert.equal(f.next(), "sse", "once up over SSE, reconnects stay on it");
  now = 999;
  assert.equal(f.next(), "sse");
  now = 1000;
  assert.equal(f.next(), "websocket", "after the period, one try of WebSocket");
  assert.equal(f.failed("websocket", unanswered, false, false), "sse", "which failed: back to SSE at once");
  assert.equal(f.next(), "sse", "for another period");
  now = 2000;
  assert.equal(f.next(), "websocket");
  f.connected("websocket");
  assert.equal(f.next(), "websocket", "WebSocket works again");

  assert.equal(make().failed("websocket", unanswered, false, true), "sse", "connect()'s round has no retry: SSE at once");
  assert.equal(make().failed("websocket", unanswered, true, false), "sse", "a blocked WebSocket: SSE at once");
  assert.equal(make().failed("websocket", refused, false, true), undefined, "a refusal with a code never falls back");
  const only = new Fallback({ transports: ["websocket"], fallbackAfter: 1, retryFirstMs: 0 });
  assert.equal(only.failed("websocket", unanswered, true, true), undefined, "no second transport, no fallback");
  const sseFirst = new Fallback({ transports: ["sse", "websocket"], fallbackAfter: 1, retryFirstMs: 0 });
  assert.equal(sseFirst.next(), "sse");
  assert.equal(sseFirst.failed("sse", unanswered, false, false), "websocket");
});
