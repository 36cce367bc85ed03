/**
 * Frames in the JSON encoding (docs/protocol.md, section 3): what the client sends, and the
 * decoding of what the server sends into typed values. No sockets here.
 *
 * Payloads: a JSON payload travels embedded as `payload`, anything else as `payload_base64`
 * (section 3.2); `msg_id` is a decimal string because it may exceed 2^53.
 */

/** A payload: JSON (a parsed value) or opaque bytes. */
export type Payload = { kind: "json"; value: unknown } | { kind: "binary"; bytes: Uint8Array };

/** One accepted binding of `connected`. */
export interface Bound {
  app: string;
  user: string;
}

/** The server's answer to `connect`. */
export interface Connected {
  connId: number;
  node: string;
  heartbeatMs: number;
  maxFrame: number;
  bindings: Bound[];
}

/** A message pushed to this user. Ack durable ones (`qos` 1, `seq` > 0) once processed. */
export interface Push {
  app: string;
  msgId: string;
  /** Position in the user's inbox (qos 1); 0 for qos 0. */
  seq: number;
  qos: number;
  createdMs: number;
  payload: Payload;
}

/** A message published to a topic this connection is subscribed to. */
export interface Publication {
  app: string;
  topic: string;
  /** Place in the topic's history; 0 for a live-only (qos 0) publication. */
  offset: number;
  msgId: string;
  createdMs: number;
  payload: Payload;
}

/** How a subscribe with `since` went (section 7.2). */
export type Recovery = "live" | "complete" | "too_old";

/** A decoded server frame. */
export type ServerFrame =
  | { op: "connected"; id: number; body: Connected }
  | { op: "pong"; id: number }
  | { op: "ping"; id: number }
  | { op: "push"; id: number; body: Push }
  | { op: "error"; id: number; code: number; message: string }
  | { op: "disconnect"; id: number; code: number; reason: string; retryAfterMs: number }
  | { op: "synced"; id: number; app: string; last: number; head: number }
  | { op: "subscribed"; id: number; app: string; topic: string; offset: number; recovery: Recovery }
  | { op: "unsubscribed"; id: number; app: string; topic: string }
  | { op: "publication"; id: number; body: Publication }
  | { op: "upstream_reply"; id: number; app: string; status: number; payload: Payload }
  | { op: "refreshed"; id: number; app: string; expiresS: number }
  | { op: "expiring"; id: number; app: string; expiresS: number };

/** A frame the server sent that does not decode; the connection is then dropped. */
export class DecodeError extends Error {}

/** The frame object for `op` with request id `id` and body fields `fields`, as JSON text. */
export function encode(op: string, id: number, fields: Record<string, unknown>): string {
  return JSON.stringify({ op, id, ...fields });
}

/** The body fields for a payload: embedded JSON, or base64 bytes. */
export function payloadFields(payload: Payload): Record<string, unknown> {
  if (payload.kind === "json") {
    return { payload: payload.value === undefined ? null : payload.value };
  }
  return { payload_base64: toBase64(payload.bytes) };
}

/** A payload from what an application passes: bytes stay bytes, anything else is JSON. */
export function toPayload(data: unknown): Payload {
  if (data instanceof Uint8Array) return { kind: "binary", bytes: data };
  if (data instanceof ArrayBuffer) return { kind: "binary", bytes: new Uint8Array(data) };
  return { kind: "json", value: data };
}

/** Decodes one text message from the server. */
export function decode(text: string): ServerFrame {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new DecodeError("a message from the server is not JSON");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new DecodeError("a message from the server is not a JSON object");
  }
  const f = new Fields(raw as Record<string, unknown>);
  const op = f.str("op");
  const id = f.int("id", 0);
  switch (op) {
    case "connected":
      return {
        op,
        id,
        body: {
          connId: f.int("conn_id"),
          node: f.str("node"),
          heartbeatMs: f.int("heartbeat_ms"),
          maxFrame: f.int("max_frame"),
          bindings: f.list("bindings").map((b, i) => {
            const bf = new Fields(asObject(b, `bindings[${i}]`));
            return { app: bf.str("app"), user: bf.str("user") };
          }),
        },
      };
    case "ping":
    case "pong":
      return { op, id };
    case "push":
      return {
        op,
        id,
        body: {
          app: f.str("app"),
          msgId: f.msgId(),
          seq: f.int("seq", 0),
          qos: f.int("qos", 0),
          createdMs: f.int("created_ms", 0),
          payload: f.payload(),
        },
      };
    case "error":
      return { op, id, code: f.int("code"), message: f.str("message", "") };
    case "disconnect":
      return { op, id, code: f.int("code"), reason: f.str("reason", ""), retryAfterMs: f.int("retry_after_ms", 0) };
    case "synced":
      return { op, id, app: f.str("app"), last: f.int("last"), head: f.int("head") };
    case "subscribed": {
      const recovery = f.str("recovery", "live");
      if (recovery !== "live" && recovery !== "complete" && recovery !== "too_old") {
        throw new DecodeError(`field "recovery" has an unknown value`);
      }
      return { op, id, app: f.str("app"), topic: f.str("topic"), offset: f.int("offset"), recovery };
    }
    case "unsubscribed":
      return { op, id, app: f.str("app"), topic: f.str("topic") };
    case "publication":
      return {
        op,
        id,
        body: {
          app: f.str("app"),
          topic: f.str("topic"),
          offset: f.int("offset", 0),
          msgId: f.msgId(),
          createdMs: f.int("created_ms", 0),
          payload: f.payload(),
        },
      };
    case "upstream_reply":
      return { op, id, app: f.str("app"), status: f.int("status"), payload: f.payload() };
    case "refreshed":
    case "expiring":
      return { op, id, app: f.str("app"), expiresS: f.int("expires_s") };
    default:
      throw new DecodeError(`unknown op from the server: ${JSON.stringify(op).slice(0, 40)}`);
  }
}

function asObject(value: unknown, name: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new DecodeError(`field "${name}" is not an object`);
  }
  return value as Record<string, unknown>;
}

/** Typed access to a frame's fields; `null` counts as absent (section 3). */
class Fields {
  constructor(private readonly raw: Record<string, unknown>) {}

  private get(name: string): unknown {
    const v = this.raw[name];
    return v === null ? undefined : v;
  }

  str(name: string, fallback?: string): string {
    const v = this.get(name);
    if (v === undefined && fallback !== undefined) return fallback;
    if (typeof v !== "string") throw new DecodeError(`field "${name}" is missing or not a string`);
    return v;
  }

  int(name: string, fallback?: number): number {
    const v = this.get(name);
    if (v === undefined && fallback !== undefined) return fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
      throw new DecodeError(`field "${name}" is missing or not a non-negative integer`);
    }
    return v;
  }

  list(name: string): unknown[] {
    const v = this.get(name);
    if (v === undefined) return [];
    if (!Array.isArray(v)) throw new DecodeError(`field "${name}" is not a list`);
    return v;
  }

  msgId(): string {
    const v = this.get("msg_id");
    if (typeof v === "string" && /^[0-9]+$/.test(v)) return v;
    if (typeof v === "number" && Number.isInteger(v) && v >= 0) return String(v);
    throw new DecodeError(`field "msg_id" is missing or not a decimal id`);
  }

  payload(): Payload {
    const json = this.raw.payload;
    const b64 = this.get("payload_base64");
    if (json !== undefined && b64 !== undefined) {
      throw new DecodeError(`both "payload" and "payload_base64" are present`);
    }
    if (b64 !== undefined) {
      if (typeof b64 !== "string") throw new DecodeError(`field "payload_base64" is not a string`);
      return { kind: "binary", bytes: fromBase64(b64) };
    }
    // `"payload": null` is the JSON payload `null`, not an absent field.
    if (json === undefined) throw new DecodeError(`neither "payload" nor "payload_base64" is present`);
    return { kind: "json", value: json };
  }
}

/** Standard base64 with padding, as the protocol writes it. */
export function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** Standard base64, padded or not. */
export function fromBase64(text: string): Uint8Array {
  const padded = text + "=".repeat((4 - (text.length % 4)) % 4);
  let binary: string;
  try {
    binary = atob(padded);
  } catch {
    throw new DecodeError(`field "payload_base64" is not base64`);
  }
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
