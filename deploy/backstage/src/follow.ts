/**
 * Following a run to its end over `GET /v1/runs/{id}/events` (SSE).
 *
 * Every history event is handed to `onEvent` once, in `seq` order: a
 * dropped or silent connection is reopened with `Last-Event-ID` set to the
 * last `seq` seen, which the API resumes from without gap or repeat. The
 * API ends the stream after the run's final event; the run is then read
 * once to return its status, outputs and error. Bounded: at most
 * {@link MAX_RECONNECTS} reconnections in all (and
 * {@link MAX_FRUITLESS_RECONNECTS} in a row that brought no event), and
 * never past `deadline`.
 */

import { FINISHED, FulfilApiError, FulfilClient, HistoryEvent, Run, sleep } from './client';
import { SseParser } from './sse';

/** Reconnections in all while following one run. */
export const MAX_RECONNECTS = 100;
/** Reconnections in a row that brought no new event. */
export const MAX_FRUITLESS_RECONNECTS = 10;
/**
 * No byte for this long (the API sends a keep-alive comment every 15 s):
 * the connection is dead, reconnect.
 */
export const SILENCE_MS = 45_000;

/** The deadline passed before the run finished. */
export class FollowTimeout extends Error {
  constructor(readonly run: Run | undefined) {
    super('the run did not finish in time');
    this.name = 'FollowTimeout';
  }
}

/** Following stopped because `signal` was aborted. */
export class FollowAborted extends Error {
  constructor() {
    super('stopped following the run');
    this.name = 'FollowAborted';
  }
}

export interface FollowOptions {
  client: FulfilClient;
  runId: string;
  /** Called once per history event, in order. */
  onEvent: (event: HistoryEvent) => void;
  /** Called when the stream dropped and is reopened. */
  onReconnect?: (why: string, attempt: number) => void;
  /** Stops following (the task was cancelled). */
  signal?: AbortSignal;
  /** Epoch milliseconds after which following stops with {@link FollowTimeout}. */
  deadline: number;
}

/** Follows the run until it finished; returns it as last read. */
export async function followRun(options: FollowOptions): Promise<Run> {
  const { client, runId, signal, deadline } = options;
  let lastSeq = 0;
  let reconnects = 0;
  let fruitless = 0;
  for (;;) {
    if (signal?.aborted) throw new FollowAborted();
    if (Date.now() >= deadline) throw new FollowTimeout(await client.getRun(runId).catch(() => undefined));
    const before = lastSeq;
    let dropped: string | undefined;
    try {
      lastSeq = await readStream(options, lastSeq);
    } catch (error) {
      if (signal?.aborted) throw new FollowAborted();
      if ((error as { fatal?: boolean }).fatal) throw error;
      if (Date.now() >= deadline) throw new FollowTimeout(await client.getRun(runId).catch(() => undefined));
      dropped = error instanceof Error ? error.message : String(error);
      // readStream keeps what it read before the drop.
      lastSeq = (error as { lastSeq?: number }).lastSeq ?? lastSeq;
    }
    if (!dropped) {
      // The API ends the stream after the run's final event; a stream
      // that ended while the run still goes on (an API process shutting
      // down) is a drop like any other.
      const run = await client.getRun(runId, signal);
      if (FINISHED.has(run.status)) return run;
      dropped = `the stream ended while the run is ${run.status}`;
    }
    reconnects += 1;
    fruitless = lastSeq > before ? 0 : fruitless + 1;
    if (reconnects > MAX_RECONNECTS || fruitless > MAX_FRUITLESS_RECONNECTS) {
      throw new Error(
        `lost the event stream of run ${runId} ${reconnects} times (${fruitless} in a row without an event); last: ${dropped}`,
      );
    }
    options.onReconnect?.(dropped, reconnects);
    await sleep(Math.min(250 * 2 ** Math.min(fruitless, 5), 5_000), signal);
  }
}

/**
 * Reads one connection of the stream from after `after`; returns the last
 * seq seen once the server ends it. A failure carries `lastSeq`.
 */
async function readStream(options: FollowOptions, after: number): Promise<number> {
  const { client, runId, onEvent, signal, deadline } = options;
  const connection = new AbortController();
  const stop = () => connection.abort();
  signal?.addEventListener('abort', stop, { once: true });
  const untilDeadline = setTimeout(stop, Math.max(0, deadline - Date.now()));
  let silence = setTimeout(stop, SILENCE_MS);
  let lastSeq = after;
  try {
    const response = await client.openEvents(runId, after, connection.signal);
    if (!response.body) throw new Error('the event stream has no body');
    const reader = response.body.getReader();
    const parser = new SseParser();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return lastSeq;
      clearTimeout(silence);
      silence = setTimeout(stop, SILENCE_MS);
      for (const event of parser.push(value)) {
        if (event.event === 'error') throw new Error(`the API stopped the watch: ${event.data}`);
        let history: HistoryEvent;
        try {
          history = JSON.parse(event.data);
        } catch {
          throw new Error(`an event that is not a history event: ${event.data.slice(0, 200)}`);
        }
        if (typeof history.seq !== 'number' || history.seq <= lastSeq) continue;
        lastSeq = history.seq;
        onEvent(history);
      }
    }
  } catch (error) {
    // A refusal (bad token, unknown run) does not heal by reconnecting.
    if (error instanceof FulfilApiError && error.status >= 400 && error.status < 500) {
      throw Object.assign(error, { fatal: true });
    }
    let message = error instanceof Error ? error.message : String(error);
    if (connection.signal.aborted && !signal?.aborted && Date.now() < deadline) {
      message = `no byte for ${SILENCE_MS / 1000} s`;
    }
    throw Object.assign(new Error(message), { lastSeq });
  } finally {
    clearTimeout(silence);
    clearTimeout(untilDeadline);
    signal?.removeEventListener('abort', stop);
    connection.abort();
  }
}
