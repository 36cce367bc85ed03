/**
 * The subscription table (no I/O): which topics the client follows, the last offset handed
 * to the application per topic, which request answers what, and which publications are
 * duplicates (docs/protocol.md, section 7.2).
 *
 * # Invariants
 * - A topic is in the table from `subscribe()` (or the business's `subscribed` with id 0)
 *   until `unsubscribe()`, the business's `unsubscribed`, or a refusal other than 4301.
 * - `last` only moves forward with publications; a `subscribed` that is not a complete
 *   recovery sets it to the reply's `offset` (where live publications start).
 */

import type { Publication, Recovery } from "./frames.js";
import { Codes } from "./errors.js";

/** What the table asks the client to emit. */
export type TopicEvent =
  | { type: "subscribed"; app: string; topic: string; offset: number; recovery: Recovery; since: number | undefined; serverSide: boolean }
  | { type: "unsubscribed"; app: string; topic: string; serverSide: boolean }
  | { type: "subscribeFailed"; app: string; topic: string; code: number; message: string; retrying: boolean };

/** A subscribe to send: the JSON body fields. */
export interface SubscribeRequest {
  app: string;
  topic: string;
  since: number | undefined;
  token: string | undefined;
}

interface Entry {
  app: string;
  topic: string;
  /** Subscribed by this client (resubscribed at reconnects), or by the business (re-applied by the server). */
  origin: "client" | "server";
  /** The last offset handed to the application (or where live publications started). */
  last: number | undefined;
  /** A subscription token, sent with every subscribe of this topic. */
  token: string | undefined;
  /** The request id of the subscribe waiting for its answer, and the `since` it carried. */
  sent: { id: number; since: number | undefined } | undefined;
}

/** Topic names: 1 to 128 bytes of UTF-8, no control characters (section 7.2). */
export function topicProblem(topic: string): string | undefined {
  const bytes = new TextEncoder().encode(topic).length;
  if (bytes === 0 || bytes > 128) return "a topic is 1 to 128 bytes long";
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(topic)) return "a topic has no control characters";
  return undefined;
}

export class Topics {
  private readonly entries = new Map<string, Entry>();
  /** Request ids of subscribes and unsubscribes waiting for their answer. */
  private readonly inFlight = new Map<number, { kind: "subscribe" | "unsubscribe"; key: string }>();

  /** Records the application's subscribe; the request to send. */
  subscribe(app: string, topic: string, since: number | undefined, token: string | undefined): SubscribeRequest {
    const key = keyOf(app, topic);
    const entry = this.entries.get(key);
    if (entry) {
      entry.origin = "client";
      if (token !== undefined) entry.token = token;
      if (since !== undefined) entry.last = since;
      return this.request(entry);
    }
    const fresh: Entry = { app, topic, origin: "client", last: since, token, sent: undefined };
    this.entries.set(key, fresh);
    return this.request(fresh);
  }

  /** Forgets a topic; false when the client did not follow it. */
  unsubscribe(app: string, topic: string): boolean {
    return this.entries.delete(keyOf(app, topic));
  }

  /** Marks a subscribe sent with request id `id`. */
  sentSubscribe(id: number, req: SubscribeRequest): void {
    const key = keyOf(req.app, req.topic);
    const entry = this.entries.get(key);
    if (!entry) return;
    entry.sent = { id, since: req.since };
    this.inFlight.set(id, { kind: "subscribe", key });
  }

  sentUnsubscribe(id: number, app: string, topic: string): void {
    this.inFlight.set(id, { kind: "unsubscribe", key: keyOf(app, topic) });
  }

  /** A new connection: answers of the old one will not come; the subscribes to send again. */
  connectionStarted(): SubscribeRequest[] {
    this.inFlight.clear();
    const out: SubscribeRequest[] = [];
    for (const entry of this.entries.values()) {
      entry.sent = undefined;
      // The server re-applies the business's subscriptions itself.
      if (entry.origin === "client") out.push(this.request(entry));
    }
    return out;
  }

  /** Whether a request id belongs to a topic request of this connection. */
  owns(id: number): boolean {
    return this.inFlight.has(id);
  }

  /**
   * Handles `subscribed` with request id `id`: the event for the application, and a subscribe
   * to send when a re-applied subscription of the business skipped publications.
   */
  subscribed(id: number, app: string, topic: string, offset: number, recovery: Recovery): { event?: TopicEvent; resend?: SubscribeRequest } {
    const key = keyOf(app, topic);
    if (id !== 0) {
      const pending = this.inFlight.get(id);
      this.inFlight.delete(id);
      const entry = this.entries.get(key);
      // A reply to a request superseded since, or to a topic dropped since.
      if (!pending || !entry || entry.sent?.id !== id) return {};
      const since = entry.sent.since;
      entry.sent = undefined;
      // After a complete recovery the recovered publications follow and move `last`.
      if (recovery !== "complete") entry.last = offset;
      return { event: { type: "subscribed", app, topic, offset, recovery, since, serverSide: entry.origin === "server" } };
    }
    const entry = this.entries.get(key);
    if (!entry) {
      this.entries.set(key, { app, topic, origin: "server", last: offset, token: undefined, sent: undefined });
      return { event: { type: "subscribed", app, topic, offset, recovery, since: undefined, serverSide: true } };
    }
    // Our own subscribe is on its way: its answer is the one the application sees.
    if (entry.sent) return {};
    if (entry.last !== undefined && entry.last < offset) {
      // Publications were missed while away: recover them; the reply is the event.
      return { resend: this.request(entry) };
    }
    entry.last = offset;
    return { event: { type: "subscribed", app, topic, offset, recovery, since: undefined, serverSide: entry.origin === "server" } };
  }

  /** Handles `unsubscribed`: the event for the application, if any. */
  unsubscribed(id: number, app: string, topic: string): TopicEvent | undefined {
    if (id !== 0) {
      if (!this.inFlight.delete(id)) return undefined;
      return { type: "unsubscribed", app, topic, serverSide: false };
    }
    this.entries.delete(keyOf(app, topic));
    return { type: "unsubscribed", app, topic, serverSide: true };
  }

  /**
   * Handles an `error` answering request `id`, if it is a topic request: the event, and
   * whether the subscribe should be retried later (4301, the server is busy).
   */
  failed(id: number, code: number, message: string): { event?: TopicEvent; retry?: SubscribeRequest } | undefined {
    const pending = this.inFlight.get(id);
    if (!pending) return undefined;
    this.inFlight.delete(id);
    const entry = this.entries.get(pending.key);
    if (pending.kind === "unsubscribe" || !entry || entry.sent?.id !== id) {
      return {};
    }
    entry.sent = undefined;
    const retrying = code === Codes.UNAVAILABLE;
    if (!retrying) this.entries.delete(pending.key);
    const event: TopicEvent = { type: "subscribeFailed", app: entry.app, topic: entry.topic, code, message, retrying };
    return retrying ? { event, retry: this.request(entry) } : { event };
  }

  /** The subscribe to send again for a topic still wanted (after a 4301), if it is. */
  retry(req: SubscribeRequest): SubscribeRequest | undefined {
    const entry = this.entries.get(keyOf(req.app, req.topic));
    return entry && !entry.sent ? this.request(entry) : undefined;
  }

  /** Whether to hand a publication over; false for one handed over before (a resend). */
  publication(p: Publication): boolean {
    const entry = this.entries.get(keyOf(p.app, p.topic));
    if (!entry || p.offset === 0) return true;
    if (entry.last !== undefined && p.offset <= entry.last) return false;
    entry.last = p.offset;
    return true;
  }

  /** The last offset handed over for a topic, if the client follows it. */
  lastOffset(app: string, topic: string): number | undefined {
    return this.entries.get(keyOf(app, topic))?.last;
  }

  private request(entry: Entry): SubscribeRequest {
    return { app: entry.app, topic: entry.topic, since: entry.last, token: entry.token };
  }
}

function keyOf(app: string, topic: string): string {
  return `${app}\u0000${topic}`;
}
