/**
 * The client side of Server-Sent Events for `GET /v1/runs/{id}/events`:
 * bytes in as they arrive, whole events out. The WHATWG rules that matter
 * here: `\n`, `\r\n` or `\r` line ends, comment lines (`:`) ignored, an
 * empty line ends an event, `data` lines joined by `\n`. The same rules as
 * the Rust client (api/src/sse.rs), so both read the stream alike.
 */

/** One event of the stream. */
export interface SseEvent {
  /** `id:`, the run's history seq for run events. */
  id?: string;
  /** `event:`; absent means `message`. */
  event?: string;
  data: string;
}

/**
 * Longest line kept while waiting for its end, so a peer that never ends
 * one cannot grow memory without bound.
 */
export const MAX_LINE = 16 * 1024 * 1024;

export class SseParser {
  private pending = '';
  private current: SseEvent = { data: '' };
  private hasData = false;
  private readonly decoder = new TextDecoder();

  /** Parses `chunk`; returns the events it completed. */
  push(chunk: Uint8Array): SseEvent[] {
    this.pending += this.decoder.decode(chunk, { stream: true });
    const events: SseEvent[] = [];
    let start = 0;
    let i = 0;
    while (i < this.pending.length) {
      const c = this.pending[i];
      if (c !== '\n' && c !== '\r') {
        i += 1;
        continue;
      }
      // A `\r` last in the chunk may be half of `\r\n`: wait for more.
      if (c === '\r' && i + 1 === this.pending.length) break;
      const event = this.line(this.pending.slice(start, i));
      if (event) events.push(event);
      i += c === '\r' && this.pending[i + 1] === '\n' ? 2 : 1;
      start = i;
    }
    this.pending = this.pending.slice(start);
    if (this.pending.length > MAX_LINE) {
      throw new Error(`an SSE line is longer than ${MAX_LINE} characters`);
    }
    return events;
  }

  private line(line: string): SseEvent | undefined {
    if (line === '') {
      const event = this.current;
      const had = this.hasData;
      this.current = { data: '' };
      this.hasData = false;
      return had ? event : undefined;
    }
    if (line.startsWith(':')) return undefined;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'id':
        this.current.id = value;
        break;
      case 'event':
        this.current.event = value;
        break;
      case 'data':
        this.current.data = this.hasData ? `${this.current.data}\n${value}` : value;
        this.hasData = true;
        break;
      default:
        break;
    }
    return undefined;
  }
}
