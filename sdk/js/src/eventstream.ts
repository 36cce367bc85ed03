/**
 * A parser of the `text/event-stream` format (the WHATWG HTML standard, "Server-sent events",
 * "Interpreting an event stream"), fed with text as it arrives in chunks split anywhere. No I/O:
 * the SSE transport decodes the bytes (a streaming `TextDecoder`, which also drops a leading
 * byte order mark) and hands the text here.
 *
 * Lines end in CRLF, LF or CR (a CR at the end of a chunk may be followed by the LF of the next
 * one). A line beginning with `:` is a comment; `field: value` loses one space after the colon;
 * `data` lines accumulate (joined with LF); an empty line dispatches the event, unless it has no
 * data; `id` (without NUL) sets the last event id, which outlives the event; `retry` (ASCII
 * digits only) sets the reconnection time. What is left at the end of the stream is discarded.
 */

/** A dispatched event. `type` is `message` when the event named none. */
export interface StreamEvent {
  type: string;
  data: string;
  /** The last event id, as set by this or an earlier event. */
  lastEventId: string;
}

/** A line or an event longer than the parser's bound. */
export class EventStreamError extends Error {}

export class EventStreamParser {
  /** The last event id buffer. */
  lastEventId = "";
  /** The reconnection time a `retry` field gave, in ms. */
  retryMs: number | undefined;

  /** The start of a line not ended yet. */
  private pending = "";
  /** The last chunk ended in CR: an LF first in the next one ends nothing. */
  private afterCr = false;
  private data = "";
  private hasData = false;
  private type = "";
  /** Per parser: a listener may feed another parser from inside this one's event. */
  private readonly lineEnd = /[\r\n]/g;

  /**
   * `onEvent` receives dispatched events; `onComment` comment lines (keep-alives).
   * `maxLength` bounds a line and an event's data, in UTF-16 code units.
   */
  constructor(
    private readonly onEvent: (event: StreamEvent) => void,
    private readonly onComment: (text: string) => void = () => {},
    public maxLength = 1 << 20,
  ) {}

  /** Parses the next piece of the stream. Throws an {@link EventStreamError} past the bound. */
  feed(chunk: string): void {
    if (chunk.length === 0) return;
    let start = 0;
    if (this.afterCr) {
      this.afterCr = false;
      if (chunk.charCodeAt(0) === 10) start = 1;
    }
    const lineEnd = this.lineEnd;
    lineEnd.lastIndex = start;
    for (let m = lineEnd.exec(chunk); m !== null; m = lineEnd.exec(chunk)) {
      const end = m.index;
      const line = this.pending.length > 0 ? this.pending + chunk.slice(start, end) : chunk.slice(start, end);
      this.pending = "";
      start = end + 1;
      if (chunk.charCodeAt(end) === 13) {
        if (start === chunk.length) this.afterCr = true;
        else if (chunk.charCodeAt(start) === 10) start++;
      }
      this.line(line);
      lineEnd.lastIndex = start;
    }
    if (start < chunk.length) {
      this.pending += chunk.slice(start);
      if (this.pending.length > this.maxLength) {
        throw new EventStreamError(`a line of the event stream is longer than ${this.maxLength} characters`);
      }
    }
  }

  private line(line: string): void {
    if (line.length > this.maxLength) {
      throw new EventStreamError(`a line of the event stream is longer than ${this.maxLength} characters`);
    }
    if (line.length === 0) return this.dispatch();
    const colon = line.indexOf(":");
    if (colon === 0) return this.onComment(line.slice(1));
    let field = line;
    let value = "";
    if (colon > 0) {
      field = line.slice(0, colon);
      value = line.charCodeAt(colon + 1) === 32 ? line.slice(colon + 2) : line.slice(colon + 1);
    }
    switch (field) {
      case "data":
        if (this.data.length + value.length + 1 > this.maxLength) {
          this.reset();
          throw new EventStreamError(`an event of the stream is longer than ${this.maxLength} characters`);
        }
        this.data = this.hasData ? `${this.data}\n${value}` : value;
        this.hasData = true;
        return;
      case "event":
        this.type = value;
        return;
      case "id":
        if (!value.includes("\u0000")) this.lastEventId = value;
        return;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.retryMs = Number(value);
        return;
      default:
        // Unknown fields are ignored.
        return;
    }
  }

  private dispatch(): void {
    if (!this.hasData) {
      this.type = "";
      return;
    }
    const event = { type: this.type || "message", data: this.data, lastEventId: this.lastEventId };
    this.reset();
    this.onEvent(event);
  }

  private reset(): void {
    this.data = "";
    this.hasData = false;
    this.type = "";
  }
}
