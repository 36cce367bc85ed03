// Durable pushes through the HTTP API at a fixed rate, for throughput.mjs (forked). Its
// argument: {http, apiKey, app}. On {type: "step", step, rate, users, warmMs, windowMs,
// concurrency, payloadBytes} it sends `rate / users.length` requests per second, each a qos 1
// push of one message to all of `users`, paced on a schedule (request k at k / rate s), with at
// most `concurrency` in flight over keep-alive connections; then answers "done" with its counts.

import http from "node:http";

import { nowMs, sleep } from "./lib.mjs";

const { http: address, apiKey, app } = JSON.parse(process.argv[2]);
const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.slice(address.lastIndexOf(":") + 1))];

async function step({ step, rate, users, warmMs, windowMs, concurrency, payloadBytes }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const head = `{"users":${JSON.stringify(users)},"qos":1,"payload":{"t":`;
  const perSecond = rate / users.length;
  const total = Math.round((perSecond * (warmMs + windowMs)) / 1000);
  const counts = { requests: 0, ok: 0, failed: 0, statuses: {}, okWindow: 0, maxInFlightWait: 0, apiMs: [] };
  let inFlight = 0;
  const start = nowMs();
  let n = 0;

  const send = () => {
    const t = nowMs();
    // By send time; a request sent after the window (a sender that fell behind) counts in none.
    const inWindow = t - start >= warmMs && t - start < warmMs + windowMs;
    const s = 2 * step + (inWindow ? 1 : 0);
    const fixed = `${head}${t.toFixed(3)},"n":${n},"s":${s},"pad":"`;
    // Padded so that the payload object (from its `{"t":`) is `payloadBytes` long.
    const body = `${fixed}${"x".repeat(Math.max(0, payloadBytes - 7 - (fixed.length - head.length)))}"}}`;
    n++;
    counts.requests++;
    inFlight++;
    const req = http.request(
      { host, port, method: "POST", path: `/v1/apps/${app}/push`, agent, headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
      (res) => {
        res.resume();
        res.on("end", () => {
          inFlight--;
          counts.statuses[res.statusCode] = (counts.statuses[res.statusCode] ?? 0) + 1;
          if (res.statusCode === 200) {
            counts.ok++;
            if (inWindow) counts.okWindow++;
            if (inWindow && counts.apiMs.length < 100000) counts.apiMs.push(nowMs() - t);
          } else counts.failed++;
        });
      },
    );
    req.on("error", () => {
      inFlight--;
      counts.failed++;
    });
    req.setTimeout(10000, () => req.destroy(new Error("timeout")));
    req.end(body);
  };

  while (counts.requests < total) {
    const due = Math.min(total, Math.floor(((nowMs() - start) / 1000) * perSecond) + 1);
    while (counts.requests < due && inFlight < concurrency) send();
    await sleep(1);
  }
  const sentBy = nowMs() - start;
  const deadline = Date.now() + 15000;
  while (inFlight > 0 && Date.now() < deadline) await sleep(5);
  agent.destroy();
  const api = counts.apiMs.sort((a, b) => a - b);
  return {
    type: "done",
    requests: counts.requests,
    ok: counts.ok,
    failed: counts.failed,
    statuses: counts.statuses,
    okWindow: counts.okWindow,
    // How late the schedule ended: more than a few ms means the sender could not keep up.
    lateMs: sentBy - (warmMs + windowMs),
    apiP50: api[Math.floor(api.length * 0.5)] ?? NaN,
    apiP99: api[Math.min(api.length - 1, Math.floor(api.length * 0.99))] ?? NaN,
  };
}

process.on("message", async (msg) => {
  if (msg.type === "step") process.send(await step(msg));
  else if (msg.type === "exit") process.exit(0);
});
process.on("disconnect", () => process.exit(0));
process.send({ type: "ready" });
