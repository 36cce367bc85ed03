/**
 * `@tether/client`: the TypeScript SDK of tether, over WebSocket with JSON frames
 * (docs/protocol.md), or Server-Sent Events where WebSocket fails, for browsers and Node 20+.
 *
 * # Layout
 *
 * - `client`: {@link TetherClient}, the application's handle: lifecycle and reconnects, acks,
 *   topics, requests, tokens; its events ({@link ClientEvents}).
 * - `transport`: the seam between the client and a transport (`Link`, how one ends).
 * - `websocket`: the WebSocket transport: handshake, heartbeats, how it ended.
 * - `sse`: the SSE transport: a `fetch` stream of events, and POSTs for what the client sends.
 * - `eventstream`: the `text/event-stream` parser; no I/O.
 * - `fallback`: which transport to try next; no I/O.
 * - `frames`: the JSON encoding of frames, and the typed values of what the server sends.
 * - `topics`: the subscription table (offsets, resubscribes, duplicates); no I/O.
 * - `tokens`: the bindings' tokens and refreshes; no I/O.
 * - `requests`: requests waiting for their answer (upstream, sync, refresh), with timeouts.
 * - `backoff`: reconnect delays (exponential, jitter, the server's `retry_after_ms` as a floor).
 * - `dispatch`: asking a dispatcher (`GET /v1/dispatch`) for endpoints, and what failed.
 * - `store`: where the device id and acked seqs are kept (memory, `localStorage`).
 * - `errors`: {@link TetherError} and the close codes with their groups.
 * - `emitter`: the typed event emitter.
 */

export { TetherClient } from "./client.js";
export type { BindingOptions, ClientEvents, ClientOptions, ConnectionState, UpstreamReply } from "./client.js";
export type { WebSocketConstructor, WebSocketLike } from "./websocket.js";
export type { TransportName } from "./transport.js";
export type { FetchInit, FetchLike, FetchResponse } from "./dispatch.js";
export type { ReconnectPolicy } from "./backoff.js";
export { Codes, codeGroup, shouldReconnect, TetherError } from "./errors.js";
export type { CodeGroup, ErrorKind } from "./errors.js";
export type { Bound, Connected, Payload, Publication, Push, Recovery } from "./frames.js";
export { LocalStorageStore, MemoryStore } from "./store.js";
export type { SeqStore, StorageLike } from "./store.js";
