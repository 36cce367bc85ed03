// An MQTT.js device (npm `mqtt`, pinned in package-lock.json), driven by
// crates/tether-server/tests/mqtt/mqttjs.rs against a real tether node. Each mode is one
// connection of one device; it prints what it saw, one line each, and exits 0, or prints why
// and exits 1 when something did not come within its time.
//
//   node client.mjs inbox PORT TOKEN VERSION DEVICE COUNT WAIT_MS
//       subscribe to the demo app's inbox at QoS 1 (MQTT 5: `$tether/inbox/demo`, the seq in
//       the User Property `seq`; 3.1.1: `$tether/inbox/demo/+`, the seq in the topic), print
//       `SEQ PAYLOAD` per message (each PUBACKed by MQTT.js), stop after COUNT messages or
//       WAIT_MS after the SUBACK, then disconnect cleanly.
//   node client.mjs topic PORT TOKEN VERSION DEVICE TOPIC COUNT
//       subscribe to TOPIC (QoS 1) and `TOPIC/#` in one SUBSCRIBE; print `granted C1 C2` (the
//       SUBACK's codes), then `TOPIC PAYLOAD` per publication until COUNT came.
//   node client.mjs rr PORT TOKEN
//       MQTT 5: publish QoS 1 to `ping` with a Response Topic and Correlation Data; print
//       `puback CODE`, then `reply PAYLOAD CORRELATION STATUS` for the answer.
//   node client.mjs kick PORT TOKEN
//       MQTT 5: connect, subscribe to the inbox, print `subscribed`, then
//       `disconnected CODE` for the server's DISCONNECT.
//   node client.mjs refused PORT TOKEN VERSION
//       connect with TOKEN; print `refused CODE` (the CONNACK's code).

import mqtt from 'mqtt';

const [mode, port, token, ...rest] = process.argv.slice(2);
// Every mode ends within this (the Rust side bounds the whole run too).
const LIMIT_MS = 15000;

function out(line) {
  process.stdout.write(`${line}\n`);
}

function fail(why) {
  out(`failed: ${why}`);
  process.exit(1);
}

setTimeout(() => fail(`${mode}: nothing more within ${LIMIT_MS} ms`), LIMIT_MS).unref();

function open(version, clientId) {
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
    protocolVersion: Number(version),
    clientId,
    username: 'demo',
    password: token,
    clean: true,
    keepalive: 30,
    reconnectPeriod: 0,
    connectTimeout: 10000,
  });
  client.on('error', (e) => {
    if (mode !== 'refused') fail(`error ${e.code ?? ''} ${e.message}`);
  });
  return client;
}

// Ends the connection once what was written (PUBACKs included) is flushed, then exits.
function finish(client) {
  client.end(false, {}, () => process.exit(0));
}

function inbox(version, device, count, waitMs) {
  const v5 = version === '5';
  const client = open(version, device);
  let got = 0;
  client.on('message', (topic, payload, packet) => {
    const seq = v5 ? packet.properties?.userProperties?.seq : topic.split('/').pop();
    out(`${seq} ${payload.toString()}`);
    got += 1;
    // MQTT.js PUBACKs after this handler returns: end on the next turn, after it.
    if (got === count) setImmediate(() => finish(client));
  });
  client.on('connect', () => {
    const filter = v5 ? '$tether/inbox/demo' : '$tether/inbox/demo/+';
    client.subscribe(filter, { qos: 1 }, (err, _subs, suback) => {
      if (err) fail(`subscribe: ${err.message} ${suback?.granted}`);
      setTimeout(() => finish(client), waitMs);
    });
  });
}

function topic(version, device, filter, count) {
  const client = open(version, device);
  let got = 0;
  client.on('message', (name, payload) => {
    out(`${name} ${payload.toString()}`);
    got += 1;
    if (got === count) setImmediate(() => finish(client));
  });
  client.on('connect', () => {
    // A refused filter makes MQTT.js report an error, with the SUBACK beside it.
    const filters = { [filter]: { qos: 1 }, [`${filter}/#`]: { qos: 0 } };
    client.subscribe(filters, (_err, _subs, suback) => {
      out(`granted ${suback.granted.join(' ')}`);
    });
  });
}

function rr() {
  const client = open('5', 'js-sensor');
  client.on('message', (name, payload, packet) => {
    if (name !== 'replies/js-sensor') return;
    const props = packet.properties ?? {};
    const status = props.userProperties?.status;
    out(`reply ${payload.toString()} ${props.correlationData?.toString()} ${status}`);
    finish(client);
  });
  client.on('connect', () => {
    const properties = {
      responseTopic: 'replies/js-sensor',
      correlationData: Buffer.from('c-1'),
    };
    client.publish('ping', '{"n":1}', { qos: 1, properties }, (err, puback) => {
      if (err) fail(`publish: ${err.message}`);
      out(`puback ${puback?.reasonCode ?? 0}`);
    });
  });
}

function kick() {
  const client = open('5', 'js-kicked');
  client.on('disconnect', (packet) => {
    out(`disconnected ${packet.reasonCode}`);
    process.exit(0);
  });
  client.on('close', () => fail('closed without a DISCONNECT'));
  client.on('connect', () => {
    client.subscribe('$tether/inbox/demo', { qos: 1 }, (err) => {
      if (err) fail(`subscribe: ${err.message}`);
      out('subscribed');
    });
  });
}

function refused(version) {
  const client = open(version, 'js-refused');
  client.on('error', (e) => {
    out(`refused ${e.code}`);
    process.exit(0);
  });
  client.on('connect', () => fail('connected with a bad token'));
}

switch (mode) {
  case 'inbox':
    inbox(rest[0], rest[1], Number(rest[2]), Number(rest[3]));
    break;
  case 'topic':
    topic(rest[0], rest[1], rest[2], Number(rest[3]));
    break;
  case 'rr':
    rr();
    break;
  case 'kick':
    kick();
    break;
  case 'refused':
    refused(rest[0]);
    break;
  default:
    fail(`unknown mode ${mode}`);
}
