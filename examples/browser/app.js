// The example page's code: one TetherClient at a time, its events shown as they arrive.
//
// Each list item carries its facts in data-* attributes (seq, offset, code...), so that what a
// person reads and what the end-to-end test checks (test/*.test.js) are the same thing.

import { LocalStorageStore, TetherClient } from "@tether/client";

const $ = (id) => document.getElementById(id);

// The device id and the last acked seq per (app, user) survive reloads and new clients: a new
// client resumes after what this browser acked.
const store = new LocalStorageStore();

/** The client of the last Connect, if any. */
let client;
/**
 * The topics the user subscribed to, with the last offset shown: a new client (after a kick,
 * or Disconnect then Connect) subscribes to them again with `since`, so nothing published
 * meanwhile is missed. Within one client the SDK does this itself across reconnects.
 */
const topics = new Map();

$("connect-form").addEventListener("submit", (e) => {
  e.preventDefault();
  void connect();
});
$("disconnect").addEventListener("click", () => client?.close());
$("subscribe-form").addEventListener("submit", (e) => {
  e.preventDefault();
  subscribe();
});
$("unsubscribe").addEventListener("click", () => {
  const topic = $("topic").value.trim();
  topics.delete(topic);
  guard(() => client?.unsubscribe(app(), topic));
});
$("upstream-form").addEventListener("submit", (e) => {
  e.preventDefault();
  void upstream();
});

async function connect() {
  client?.close();
  const url = $("url").value.trim();
  const dispatch = $("dispatch").value.trim();
  const token = $("token").value.trim();
  let c;
  try {
    c = new TetherClient({
      url: url || undefined,
      dispatch: dispatch || undefined,
      bindings: [{ app: app(), token }],
      store,
    });
  } catch (e) {
    return event("problem", `cannot connect: ${e.message}`);
  }
  client = c;

  // Listeners first: a backlog of pushes arrives right behind the handshake.
  c.on("state", ({ state }) => {
    if (client !== c) return;
    $("state").textContent = state;
  });
  // WebSocket, or Server-Sent Events where WebSocket fails (a proxy that strips the upgrade).
  c.on("transport", ({ transport, previous }) => {
    if (client !== c) return;
    $("transport").textContent = transport;
    const why = previous ? ` instead of ${previous}` : "";
    event("transport", `using ${transport === "sse" ? "Server-Sent Events" : "WebSocket"}${why}`, { transport, previous: previous ?? "" });
  });
  c.on("connected", (x) => {
    $("user").textContent = x.bindings.map((b) => b.user).join(", ");
    $("device").textContent = c.deviceId;
    $("node").textContent = x.node;
    $("endpoint").textContent = x.url;
    event("connected", `connected to ${x.node} (${x.url}) over ${x.transport}, heartbeat ${x.heartbeatMs} ms`, {
      url: x.url,
      node: x.node,
      transport: x.transport,
    });
  });
  c.on("disconnected", (x) => {
    event("disconnected problem", x.error.message, { code: x.code ?? "", reconnecting: x.reconnecting });
  });
  c.on("message", (push) => {
    const what = push.qos > 0 ? `push seq ${push.seq}` : "push (qos 0)";
    message("push", `${what}: ${payloadText(push.payload)}`, { seq: push.seq, qos: push.qos, msgId: push.msgId, payload: payloadText(push.payload) });
    // Shown, so processed: ack it (cumulative; qos 0 pushes have seq 0, which is ignored).
    c.ack(push.app, push.seq);
  });
  c.on("publication", (p) => {
    if (p.offset > 0 && topics.has(p.topic)) topics.set(p.topic, Math.max(topics.get(p.topic), p.offset));
    const where = p.offset > 0 ? `${p.topic} #${p.offset}` : `${p.topic} (live)`;
    message("publication", `${where}: ${payloadText(p.payload)}`, { topic: p.topic, offset: p.offset, payload: payloadText(p.payload) });
  });
  c.on("subscribed", (s) => {
    // After a complete recovery the recovered publications follow and move the offset.
    if (s.recovery !== "complete" && topics.has(s.topic)) topics.set(s.topic, s.offset);
    const since = s.since === undefined ? "" : ` since ${s.since}`;
    const warn = s.recovery === "too_old" ? ": publications were lost, refetch them from the backend" : "";
    event("subscribed", `subscribed to ${s.topic}${since}, recovery ${s.recovery}, live after #${s.offset}${warn}`, {
      topic: s.topic,
      offset: s.offset,
      recovery: s.recovery,
      since: s.since ?? "",
    });
  });
  c.on("unsubscribed", (s) => event("unsubscribed", `unsubscribed from ${s.topic}`, { topic: s.topic }));
  c.on("subscribeFailed", (s) => {
    if (!s.retrying) topics.delete(s.topic);
    event("problem", `${s.message} (code ${s.code}${s.retrying ? ", retrying" : ""})`, { topic: s.topic, code: s.code });
  });
  c.on("error", (e) => event("problem", e.message, { code: e.code ?? "" }));

  try {
    await c.connect();
  } catch (e) {
    return event("problem", `connect failed: ${e.message}`, { code: e.code ?? "" });
  }
  for (const [topic, last] of topics) c.subscribe(app(), topic, { since: last });
}

function subscribe() {
  const topic = $("topic").value.trim();
  const sinceText = $("since").value.trim();
  const since = sinceText === "" ? undefined : Number(sinceText);
  if (since !== undefined && !(Number.isSafeInteger(since) && since >= 0)) {
    return event("problem", `since must be an offset (0 or more), not ${JSON.stringify(sinceText)}`);
  }
  if (!client) return event("problem", "connect first");
  if (guard(() => client.subscribe(app(), topic, since === undefined ? {} : { since }))) {
    topics.set(topic, since ?? topics.get(topic) ?? 0);
  }
}

async function upstream() {
  if (!client) return event("problem", "connect first");
  const kind = $("kind").value.trim();
  const text = $("data").value;
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    data = text; // Not JSON: sent as a JSON string.
  }
  try {
    const reply = await client.upstream(app(), kind, data, { timeoutMs: 10_000 });
    event("reply", `upstream ${kind} answered ${reply.status}: ${payloadText(reply.payload)}`, { status: reply.status, payload: payloadText(reply.payload) });
  } catch (e) {
    event("problem", `upstream ${kind} failed: ${e.message}`, { code: e.code ?? "" });
  }
}

function app() {
  return $("app").value.trim();
}

/** Runs `fn`, showing a `config` error (a bad topic, an unbound app) instead of throwing. */
function guard(fn) {
  try {
    fn();
    return true;
  } catch (e) {
    event("problem", e.message);
    return false;
  }
}

function payloadText(payload) {
  if (payload.kind === "json") return JSON.stringify(payload.value);
  const hex = Array.from(payload.bytes.slice(0, 32), (b) => b.toString(16).padStart(2, "0")).join("");
  return `${payload.bytes.length} bytes: ${hex}${payload.bytes.length > 32 ? "..." : ""}`;
}

function message(kind, text, data) {
  append($("messages"), kind, text, data);
}

function event(kind, text, data = {}) {
  append($("events"), kind, text, { event: kind.split(" ")[0], ...data });
}

function append(list, className, text, data) {
  const li = document.createElement("li");
  li.className = className;
  for (const [key, value] of Object.entries(data)) li.dataset[key] = String(value);
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  list.append(li);
  li.scrollIntoView({ block: "nearest" });
}
