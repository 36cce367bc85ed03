// The tether console: reads this node's admin and ops routes (the cluster's node list
// included) with the admin key (kept in sessionStorage), and the app routes with an app's API
// key. No framework, no inline script (the page's Content-Security-Policy forbids it), nothing
// loaded from elsewhere.
"use strict";

const ADMIN = "tether.console.admin";
const APP = "tether.console.app";
const APP_KEY = "tether.console.app_key";
/** Seconds between two reads of the stats and of /metrics. */
const POLL_MS = 2000;
/** Points a chart keeps (two minutes at POLL_MS). */
const POINTS = 60;
/** How many of the inbox's last messages the lookup shows. */
const LAST_MESSAGES = 10;

/** Each chart: its title and its lines, each the sum of every sample of the named counters. */
const CHARTS = [
  { title: "pushes and publishes", lines: [
    { label: "pushes", names: ["tether_pushes_total"] },
    { label: "publishes", names: ["tether_publishes_total"] },
  ] },
  { title: "deliveries", lines: [
    { label: "pushes", names: ["tether_push_deliveries_total"] },
    { label: "publications", names: ["tether_fanout_deliveries_total"] },
  ] },
  { title: "handshakes", lines: [
    { label: "handshakes", names: ["tether_handshakes_total"] },
    { label: "tls", names: ["tether_tls_handshakes_total"] },
  ] },
  { title: "refusals", lines: [
    { label: "connections", names: ["tether_connections_refused_total", "tether_rejected_connections_total"] },
    { label: "requests", names: ["tether_requests_refused_total", "tether_rate_limited_total"] },
  ] },
];
const COLOURS = ["#2b6cb0", "#c05621"];
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);

let timer = 0;
/** The previous read of /metrics: its time (ms) and samples. */
let previous = null;
/** chart index -> line index -> rates (newest last). */
const history = CHARTS.map((c) => c.lines.map(() => []));

// ---- requests ----

class HttpError extends Error {
  constructor(status, body) {
    super(`${status}: ${body?.error ?? body ?? ""}`);
    this.status = status;
  }
}

/** A request with `key` as bearer; the JSON (or text) answer, or throws HttpError. */
async function call(method, path, key, body) {
  const headers = {};
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  let parsed = text;
  if ((res.headers.get("content-type") ?? "").includes("json") && text) parsed = JSON.parse(text);
  if (!res.ok) throw new HttpError(res.status, parsed);
  return parsed;
}

const admin = (method, path, body) => call(method, path, sessionStorage.getItem(ADMIN), body);

function appCall(method, path, body) {
  const app = $("app-id").value.trim();
  const key = $("app-key").value.trim();
  if (!app || !key) throw new Error("give the app and its API key first");
  sessionStorage.setItem(APP, app);
  sessionStorage.setItem(APP_KEY, key);
  return call(method, `/v1/apps/${encodeURIComponent(app)}${path}`, key, body);
}

// ---- rendering helpers ----

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function bytes(n) {
  if (n === null || n === undefined) return "n/a";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function time(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

// ---- /metrics ----

/** The Prometheus text format's samples: [{name, labels, value}]. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return samples;
}

/** The sum of every sample of `names`, or undefined when none is exposed. */
function total(samples, names) {
  let sum;
  for (const s of samples) if (names.includes(s.name) && Number.isFinite(s.value)) sum = (sum ?? 0) + s.value;
  return sum;
}

function readMetrics(text, now) {
  const samples = parseMetrics(text);
  if (previous) {
    const seconds = (now - previous.at) / 1000;
    CHARTS.forEach((chart, c) => chart.lines.forEach((line, l) => {
      const b = total(samples, line.names);
      // A counter first shown now was registered by its first increment: it was 0 before.
      const a = total(previous.samples, line.names) ?? (b === undefined ? undefined : 0);
      // A counter that went down: the node restarted; no rate for this interval.
      const rate = a === undefined || b === undefined || b < a ? null : (b - a) / seconds;
      const points = history[c][l];
      points.push(rate);
      if (points.length > POINTS) points.shift();
    }));
    // fsync latency: the mean over the interval from a histogram's (or summary's) sum and count.
    const sum = [total(previous.samples, ["tether_store_fsync_seconds_sum"]), total(samples, ["tether_store_fsync_seconds_sum"])];
    const count = [total(previous.samples, ["tether_store_fsync_seconds_count"]), total(samples, ["tether_store_fsync_seconds_count"])];
    if (count[1] === undefined) $("store-fsync").textContent = "not exposed";
    else if (count[1] > count[0]) {
      const mean = (sum[1] - sum[0]) / (count[1] - count[0]);
      $("store-fsync").textContent = `${(mean * 1000).toFixed(2)} ms mean over the last ${Math.round(seconds)} s (${count[1] - count[0]} fsyncs)`;
    } else {
      const since = count[1] ? `; ${((sum[1] / count[1]) * 1000).toFixed(2)} ms mean over ${count[1]} since the start` : "";
      $("store-fsync").textContent = `no fsync in the last ${Math.round(seconds)} s${since}`;
    }
  }
  previous = { at: now, samples };
  drawCharts();
}

// ---- charts ----

function drawCharts() {
  const root = $("charts");
  $("window").textContent = `${(POINTS * POLL_MS) / 1000} s`;
  if (!root.children.length) {
    for (const chart of CHARTS) {
      const figure = document.createElement("figure");
      const caption = document.createElement("figcaption");
      caption.textContent = chart.title;
      figure.appendChild(caption);
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("viewBox", "0 0 300 100");
      svg.setAttribute("preserveAspectRatio", "none");
      figure.appendChild(svg);
      const legend = document.createElement("p");
      legend.className = "legend";
      figure.appendChild(legend);
      root.appendChild(figure);
    }
  }
  CHARTS.forEach((chart, c) => {
    const figure = root.children[c];
    figure.dataset.chart = chart.title;
    const svg = figure.querySelector("svg");
    const legend = figure.querySelector(".legend");
    const max = Math.max(1, ...history[c].flat().filter((v) => v !== null));
    svg.replaceChildren();
    legend.replaceChildren();
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "2");
    label.setAttribute("y", "10");
    label.textContent = `${max.toFixed(max < 10 ? 1 : 0)}/s`;
    svg.appendChild(label);
    chart.lines.forEach((line, l) => {
      const points = history[c][l];
      const coords = [];
      points.forEach((v, i) => {
        if (v === null) return;
        const x = (300 * (POINTS - points.length + i)) / (POINTS - 1);
        const y = 98 - (v / max) * 84;
        coords.push(`${x.toFixed(1)},${y.toFixed(1)}`);
      });
      const path = document.createElementNS(SVG, "polyline");
      path.setAttribute("points", coords.join(" "));
      path.setAttribute("fill", "none");
      path.setAttribute("stroke", COLOURS[l % COLOURS.length]);
      path.setAttribute("stroke-width", "1.5");
      path.setAttribute("vector-effect", "non-scaling-stroke");
      svg.appendChild(path);
      const last = points.at(-1);
      const item = document.createElement("span");
      item.className = `line${l}`;
      item.dataset.line = line.label;
      item.dataset.rate = last === null || last === undefined ? "" : String(last);
      item.dataset.peak = String(Math.max(0, ...points.filter((v) => v !== null)));
      item.title = `peak ${Number(item.dataset.peak).toFixed(2)}/s in the window`;
      item.textContent = `${line.label}: ${last === null || last === undefined ? "n/a" : `${last.toFixed(1)}/s`}`;
      legend.appendChild(item);
    });
  });
}

// ---- stats ----

function showStats(stats, ready) {
  $("node-name").textContent = stats.node;
  $("node-id").textContent = stats.node;
  $("node-ready").textContent = ready;
  $("node-draining").textContent = stats.draining ? "yes" : "no";
  $("node-endpoints").textContent = JSON.stringify(stats.endpoints);
  const status = $("status");
  status.textContent = stats.draining ? "draining" : stats.ready ? "ready" : "not ready";
  status.className = `badge ${stats.draining ? "bad" : stats.ready ? "good" : "bad"}`;
  const store = stats.store ?? {};
  $("store-backend").textContent = store.backend + (store.problem ? ` (${store.problem})` : "");
  $("store-size").textContent = store.backend === "embedded" ? bytes(store.disk_bytes) : "in memory";
  $("store-free").textContent = store.backend === "embedded" ? `${bytes(store.free_bytes)} (reserve ${bytes(store.min_free_bytes)})` : "n/a";
  $("store-queued").textContent = store.queued_writes ?? "n/a";
  const out = stats.outbound ?? {};
  $("outbound").textContent = `${bytes(out.queued_bytes)}; ${out.over_half} connections over half their limit`;

  const conns = stats.connections;
  $("conn-total").textContent = conns.total;
  $("conn-transports").textContent = `tcp ${conns.tcp} · ws ${conns.ws} · sse ${conns.sse} · mqtt ${conns.mqtt}`;
  const body = $("by-app").querySelector("tbody");
  body.replaceChildren();
  for (const [app, n] of Object.entries(conns.by_app)) {
    const row = document.createElement("tr");
    row.dataset.app = app;
    row.dataset.tcp = n.tcp;
    row.dataset.ws = n.ws;
    row.dataset.sse = n.sse;
    row.dataset.mqtt = n.mqtt;
    cell(row, app);
    cell(row, n.tcp);
    cell(row, n.ws);
    cell(row, n.sse);
    cell(row, n.mqtt);
    cell(row, n.tcp + n.ws + n.sse + n.mqtt);
    body.appendChild(row);
  }
  $("raw-stats").textContent = JSON.stringify(stats, null, 2);
}

// ---- nodes ----

/** `/v1/admin/nodes`: a row per node, this one in bold. */
function showNodes(answer) {
  $("nodes-total").textContent = answer.nodes.length;
  const body = $("nodes").querySelector("tbody");
  body.replaceChildren();
  for (const n of answer.nodes) {
    const row = document.createElement("tr");
    row.dataset.node = n.id;
    row.dataset.state = n.state;
    row.dataset.alive = n.alive;
    row.dataset.connections = n.connections;
    row.dataset.endpoints = n.endpoints.join(" ");
    if (n.id === answer.node) row.className = "self";
    cell(row, n.id === answer.node ? `${n.id} (this node)` : n.id);
    cell(row, n.endpoints.join(" ")).className = "endpoints";
    cell(row, n.zone || "-");
    cell(row, n.state).className = n.state === "serving" ? "" : "bad";
    cell(row, `${n.connections} / ${n.max_connections}`);
    const left = Math.round((n.expires_ms - answer.now_ms) / 1000);
    const alive = cell(row, n.alive ? `yes (announcement holds ${left} s more)` : `no: silent, expired ${-left} s ago`);
    if (!n.alive) alive.className = "bad";
    body.appendChild(row);
  }
}

async function pollNodes() {
  try {
    showNodes(await admin("GET", "/v1/admin/nodes"));
    $("nodes-error").textContent = "";
  } catch (e) {
    // A refused key is handled by the stats' read; the registry may be out of reach alone.
    $("nodes-error").textContent = `reading the nodes failed: ${e.message}`;
  }
}

async function poll() {
  pollNodes();
  try {
    const [stats, metrics, ready] = await Promise.all([
      admin("GET", "/v1/admin/stats"),
      call("GET", "/metrics"),
      call("GET", "/readyz").then((t) => t.trim(), (e) => (e instanceof HttpError ? `no: ${e.message}` : Promise.reject(e))),
    ]);
    showStats(stats, ready);
    readMetrics(metrics, Date.now());
    $("poll-error").textContent = "";
  } catch (e) {
    if (e instanceof HttpError && (e.status === 401 || e.status === 403)) {
      logout("the admin key was refused");
      return;
    }
    $("poll-error").textContent = `reading the node failed: ${e.message}`;
  }
}

// ---- log in and out ----

async function login(key) {
  $("login-error").textContent = "";
  try {
    await call("GET", "/v1/admin/stats", key);
  } catch (e) {
    $("login-error").textContent = e.status === 404 ? "the admin API is off on this node: set [admin] key" : `refused: ${e.message}`;
    return;
  }
  sessionStorage.setItem(ADMIN, key);
  $("login-panel").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  await poll();
  clearInterval(timer);
  timer = setInterval(poll, POLL_MS);
}

function logout(why) {
  clearInterval(timer);
  sessionStorage.removeItem(ADMIN);
  $("console").hidden = true;
  $("logout").hidden = true;
  $("login-panel").hidden = false;
  $("login-error").textContent = why ?? "";
}

// ---- user lookup ----

async function lookup() {
  const user = $("lookup-user").value.trim();
  $("lookup-error").textContent = "";
  try {
    const u = `/users/${encodeURIComponent(user)}`;
    const presence = await appCall("GET", `${u}/presence`);
    const first = await appCall("GET", `${u}/messages?limit=1`);
    const after = Math.max(0, first.head - LAST_MESSAGES);
    const page = await appCall("GET", `${u}/messages?after=${after}&limit=${LAST_MESSAGES}`);
    $("lookup-online").textContent = `${presence.user} is ${presence.online ? "online" : "offline"}`;
    $("lookup-head").textContent = page.head;
    const conns = $("lookup-connections").querySelector("tbody");
    conns.replaceChildren();
    for (const c of presence.connections) {
      const row = document.createElement("tr");
      row.dataset.device = c.device;
      row.dataset.transport = c.transport;
      for (const v of [c.node, c.conn, c.device, c.transport, time(c.connected_at_ms)]) cell(row, v);
      conns.appendChild(row);
    }
    const devices = $("lookup-devices").querySelector("tbody");
    devices.replaceChildren();
    for (const d of presence.devices) {
      const row = document.createElement("tr");
      row.dataset.device = d.device;
      row.dataset.acked = d.acked;
      for (const v of [d.device, d.acked, d.online ? "yes" : "no"]) cell(row, v);
      devices.appendChild(row);
    }
    const messages = $("lookup-messages").querySelector("tbody");
    messages.replaceChildren();
    for (const m of page.messages.slice().reverse()) {
      const row = document.createElement("tr");
      row.dataset.seq = m.seq;
      const payload = m.payload !== undefined ? JSON.stringify(m.payload) : `base64 ${m.payload_base64}`;
      for (const v of [m.seq, m.id, time(m.created_ms), payload]) cell(row, v);
      messages.appendChild(row);
    }
    $("lookup-result").hidden = false;
  } catch (e) {
    $("lookup-error").textContent = `lookup failed: ${e.message}`;
  }
}

// ---- send ----

async function send() {
  const result = $("send-result");
  result.className = "";
  result.textContent = "sending…";
  const text = $("send-payload").value;
  let payload;
  try {
    payload = JSON.parse(text);
  } catch {
    payload = text;
  }
  const qos = Number($("send-qos").value);
  const target = $("send-target").value.trim();
  try {
    let answer;
    if ($("send-kind").value === "push") {
      const users = target.split(",").map((u) => u.trim()).filter(Boolean);
      answer = await appCall("POST", "/push", { users, payload, qos });
    } else {
      answer = await appCall("POST", `/topics/${encodeURIComponent(target)}/publish`, { payload, qos });
    }
    result.className = "ok";
    result.textContent = `sent: ${JSON.stringify(answer)}`;
  } catch (e) {
    result.className = "error";
    result.textContent = `refused: ${e.message}`;
  }
}

// ---- drain ----

async function drain() {
  $("drain-dialog").close();
  try {
    const answer = await admin("POST", "/v1/admin/drain");
    $("drain-result").textContent = `draining: ${answer.connections} connections told to move over ${answer.spread_ms} ms`;
  } catch (e) {
    $("drain-result").textContent = `drain refused: ${e.message}`;
  }
  await poll();
}

// ---- wiring ----

function submit(id, action) {
  $(id).addEventListener("submit", (e) => {
    e.preventDefault();
    action();
  });
}

submit("login-form", () => login($("login-key").value.trim()));
submit("lookup-form", lookup);
submit("send-form", send);
submit("app-form", () => {});
$("logout").addEventListener("click", () => logout());
$("drain").addEventListener("click", () => {
  $("drain-node").textContent = $("node-id").textContent;
  $("drain-dialog").showModal();
});
$("drain-cancel").addEventListener("click", () => $("drain-dialog").close());
$("drain-confirm").addEventListener("click", drain);
$("app-id").value = sessionStorage.getItem(APP) ?? "";
$("app-key").value = sessionStorage.getItem(APP_KEY) ?? "";
if (sessionStorage.getItem(ADMIN)) login(sessionStorage.getItem(ADMIN));
