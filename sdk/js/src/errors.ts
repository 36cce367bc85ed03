/**
 * Close codes (docs/protocol.md, section 9) and {@link TetherError}, the one error type.
 *
 * A code's hundred says what a client must do, so that a client meeting a code newer than
 * itself still behaves correctly: the SDK decides from the group, never from a list.
 */

/** What a code tells the client to do. */
export type CodeGroup = "reconnect" | "redispatch" | "stop" | "request";

/**
 * The RFC 6455 codes the server closes with when the client broke WebSocket itself (1002 a
 * forbidden frame, 1003 the other encoding, 1007 text that is not UTF-8, 1009 a message over
 * the limit): what the client sent would be refused again, so they stop like 42xx.
 */
const WEBSOCKET_REFUSALS: ReadonlySet<number> = new Set([1002, 1003, 1007, 1009]);

/** A WebSocket close code as the server's code, or undefined for a close the server did not name (1006...). */
export function serverCode(wsCode: number): number | undefined {
  return (wsCode >= 4000 && wsCode < 5000) || WEBSOCKET_REFUSALS.has(wsCode) ? wsCode : undefined;
}

/**
 * The group of a code; the WebSocket refusals above stop, and other codes outside 4000-4399
 * (WebSocket's own, 1006...) reconnect.
 */
export function codeGroup(code: number): CodeGroup {
  if (WEBSOCKET_REFUSALS.has(code)) return "stop";
  if (code >= 4100 && code < 4200) return "redispatch";
  if (code >= 4200 && code < 4300) return "stop";
  if (code >= 4300 && code < 4400) return "request";
  return "reconnect";
}

/** Whether a connection closed with `code` should be reconnected (groups 40xx, 41xx, others). */
export function shouldReconnect(code: number): boolean {
  const group = codeGroup(code);
  return group === "reconnect" || group === "redispatch";
}

/** The protocol's codes by name, for comparisons in application code. */
export const Codes = {
  INTERNAL: 4000,
  SLOW: 4001,
  HEARTBEAT_TIMEOUT: 4002,
  HANDSHAKE_TIMEOUT: 4003,
  IP_LIMIT: 4004,
  SHUTDOWN: 4100,
  DRAIN: 4101,
  CONNECTION_LIMIT: 4102,
  PROTOCOL: 4200,
  FRAME_TOO_LARGE: 4201,
  UNSUPPORTED_VERSION: 4202,
  UNKNOWN_OP: 4203,
  BAD_TOKEN: 4204,
  TOKEN_EXPIRED: 4205,
  UNKNOWN_APP: 4206,
  KICKED: 4207,
  EXPECTED_CONNECT: 4208,
  BAD_BINDINGS: 4209,
  APP_REMOVED: 4210,
  TAKEN_OVER: 4211,
  BAD_REQUEST: 4300,
  UNAVAILABLE: 4301,
  LIMIT: 4302,
  NO_WEBHOOK: 4303,
  UPSTREAM_FAILED: 4304,
  FORBIDDEN: 4305,
  TOKEN_REFUSED: 4306,
} as const;

/**
 * The code of a refusal's label (`bad_token`...), for the codes that refuse a `connect` for
 * good (42xx): how an SSE stream refused with an HTTP status names its code (section 14.1).
 * Labels of HTTP answers that are not codes (`bad_request`, `forbidden`) give undefined.
 */
export function refusalCode(label: string): number | undefined {
  const key = label.toUpperCase() as keyof typeof Codes;
  const code = Object.prototype.hasOwnProperty.call(Codes, key) ? Codes[key] : undefined;
  return code !== undefined && code >= 4200 && code < 4300 ? code : undefined;
}

/** What went wrong, as a stable name to switch on. */
export type ErrorKind =
  /** Options the client cannot work with (no binding, no WebSocket implementation, ...). */
  | "config"
  /** The server refused the connection, or closed it, with `code`. */
  | "rejected"
  /** The socket or the stream could not be opened, or closed without a tether code. */
  | "transport"
  /** Connecting and the handshake together took longer than `connectTimeoutMs`. */
  | "timeout"
  /** The server sent something that is not a frame of the protocol. */
  | "protocol"
  /** A request was refused with a 43xx code (upstream, sync, refresh); the connection stays open. */
  | "request"
  /** An upstream or a sync got no answer within its timeout (an upstream may still have reached the webhook). */
  | "request_timeout"
  /** The connection ended before a request's answer (an upstream may have been delivered). */
  | "connection_lost"
  /** The dispatcher could not be asked or did not answer with endpoints. */
  | "dispatch"
  /** The client was closed. */
  | "closed";

/**
 * Every failure of the SDK. `code` is the server's code when it gave one (a `disconnect`, an
 * `error` frame or a WebSocket close code); `willReconnect` says whether the client goes on
 * trying by itself.
 */
export class TetherError extends Error {
  override readonly name = "TetherError";

  constructor(
    readonly kind: ErrorKind,
    /** What happened, without the code and reconnect note that `message` adds. */
    readonly detail: string,
    readonly code: number | undefined = undefined,
    readonly willReconnect = false,
    /** The server's `retry_after_ms` (0 when it gave none). */
    readonly retryAfterMs = 0,
    /**
     * For `dispatch`: the HTTP status (undefined: unreachable) and the answer's error code; for
     * an SSE stream refused with an HTTP error, its status and code label.
     */
    readonly status: number | undefined = undefined,
    readonly dispatchCode: string | undefined = undefined,
  ) {
    super(describe(kind, detail, code, willReconnect));
  }
}

function describe(kind: ErrorKind, message: string, code: number | undefined, willReconnect: boolean): string {
  const parts = code === undefined ? [] : [`code ${code}`];
  if (kind === "rejected" || kind === "transport" || kind === "timeout" || kind === "dispatch") {
    parts.push(willReconnect ? "the client reconnects" : "the client does not reconnect");
  }
  return parts.length === 0 ? message : `${message} (${parts.join(", ")})`;
}
