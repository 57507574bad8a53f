/**
 * A small client of Fulfil's HTTP API: what the action needs and nothing
 * more (file a request, read and cancel a run, open its event stream).
 * Errors are `application/problem+json`; a {@link FulfilApiError} keeps the
 * problem's `code` so callers decide on it, never on message text.
 */

/** `POST /v1/promises/{name}/requests` answered 202. */
export interface Accepted {
  request_id: string;
  run_id: string;
  /** An earlier request with the same idempotency key was returned. */
  replayed: boolean;
}

export interface RunStep {
  id: string;
  status: string;
  error?: string | null;
  attempt?: number;
}

/** `GET /v1/runs/{id}` (the fields the action reads). */
export interface Run {
  id: string;
  request_id: string;
  promise: string;
  status: string;
  outputs?: unknown;
  error?: string | null;
  steps?: RunStep[];
}

/** One item of a run's history, as each SSE event's `data` carries it. */
export interface HistoryEvent {
  seq: number;
  type: string;
  step?: string | null;
  attempt?: number | null;
  actor?: string;
  at?: string;
  data?: any;
}

/** Statuses after which nothing happens to a run unless it is retried. */
export const FINISHED = new Set(['succeeded', 'failed', 'compensated', 'cancelled']);

/** Each call's own bound; the event stream has none (it lasts as long as the run). */
const CALL_TIMEOUT_MS = 30_000;
/** Tries of one call while Fulfil is unreachable or answers 502/503/504. */
const TRIES = 5;
/** Longest wait between tries, whatever `Retry-After` says. */
const MAX_RETRY_WAIT_MS = 10_000;

/** Fulfil answered with a problem (or not at all). */
export class FulfilApiError extends Error {
  constructor(
    message: string,
    /** The HTTP status; 0 when Fulfil could not be reached. */
    readonly status: number,
    /** The problem's `code` (`not-found`, `idempotency-conflict`, ...). */
    readonly code?: string,
    /** The whole problem body. */
    readonly problem?: any,
  ) {
    super(message);
    this.name = 'FulfilApiError';
  }
}

/** Waits `ms`, or less when `signal` aborts first (it never rejects). */
export const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

export class FulfilClient {
  readonly baseUrl: string;

  constructor(
    baseUrl: string,
    private readonly token?: string,
  ) {
    let url: URL;
    try {
      url = new URL(baseUrl);
    } catch {
      throw new Error(`the Fulfil URL ${JSON.stringify(baseUrl)} is not a URL (e.g. http://fulfil.internal:8080)`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new Error(`the Fulfil URL ${JSON.stringify(baseUrl)} is not http(s)`);
    }
    this.baseUrl = baseUrl.replace(/\/+$/, '');
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    const headers: Record<string, string> = { Accept: 'application/json', ...extra };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  /**
   * One call, tried again (bounded) when Fulfil is unreachable or answers
   * 502, 503 or 504. Only safe calls come here: reads, a cancel (which
   * says the same the second time) and filing with an idempotency key
   * (which files once however often it is sent).
   */
  private async call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    let lastError: FulfilApiError | undefined;
    for (let attempt = 1; attempt <= TRIES; attempt++) {
      if (signal?.aborted) break;
      let wait = Math.min(500 * 2 ** (attempt - 1), MAX_RETRY_WAIT_MS);
      try {
        const timeout = AbortSignal.timeout(CALL_TIMEOUT_MS);
        const response = await fetch(`${this.baseUrl}${path}`, {
          method,
          headers: this.headers(body === undefined ? {} : { 'Content-Type': 'application/json' }),
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
        });
        const text = await response.text();
        let parsed: any = null;
        try {
          parsed = text ? JSON.parse(text) : null;
        } catch {
          parsed = text;
        }
        if (response.ok) return parsed as T;
        lastError = problemError(method, path, response.status, parsed);
        if (![502, 503, 504].includes(response.status)) throw lastError;
        const retryAfter = Number(response.headers.get('retry-after'));
        if (Number.isFinite(retryAfter) && retryAfter > 0) wait = Math.min(retryAfter * 1000, MAX_RETRY_WAIT_MS);
      } catch (error) {
        if (error instanceof FulfilApiError && ![502, 503, 504].includes(error.status)) throw error;
        if (!(error instanceof FulfilApiError)) {
          if (signal?.aborted) break;
          lastError = new FulfilApiError(
            `cannot reach Fulfil at ${this.baseUrl} (${method} ${path}): ${describeFetchError(error)}`,
            0,
          );
        }
      }
      if (attempt < TRIES) await sleep(wait, signal);
    }
    throw lastError ?? new FulfilApiError(`${method} ${path}: stopped (aborted)`, 0);
  }

  /** Files a request; the key makes a second filing return the first. */
  fileRequest(promise: string, params: Record<string, unknown>, idempotencyKey: string): Promise<Accepted> {
    return this.call<Accepted>('POST', `/v1/promises/${encodeURIComponent(promise)}/requests`, {
      params,
      idempotency_key: idempotencyKey,
    });
  }

  getRun(runId: string, signal?: AbortSignal): Promise<Run> {
    return this.call<Run>('GET', `/v1/runs/${encodeURIComponent(runId)}`, undefined, signal);
  }

  /** Stops a run; succeeded steps are compensated before it ends `cancelled`. */
  cancelRun(runId: string, reason: string): Promise<{ run_id: string; status: string }> {
    return this.call('POST', `/v1/runs/${encodeURIComponent(runId)}/cancel`, { reason });
  }

  /**
   * Opens the run's event stream after history seq `after` (sent as
   * `Last-Event-ID`, which the API resumes from without gap or repeat).
   */
  async openEvents(runId: string, after: number, signal: AbortSignal): Promise<Response> {
    const path = `/v1/runs/${encodeURIComponent(runId)}/events`;
    let response: Response;
    try {
      response = await fetch(`${this.baseUrl}${path}`, {
        headers: this.headers({ Accept: 'text/event-stream', 'Last-Event-ID': String(after) }),
        signal,
      });
    } catch (error) {
      throw new FulfilApiError(`cannot reach Fulfil at ${this.baseUrl} (GET ${path}): ${describeFetchError(error)}`, 0);
    }
    if (!response.ok) {
      const text = await response.text().catch(() => '');
      let parsed: any = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        /* not JSON */
      }
      throw problemError('GET', path, response.status, parsed);
    }
    return response;
  }
}

function problemError(method: string, path: string, status: number, body: any): FulfilApiError {
  const detail = typeof body === 'object' && body ? body.detail ?? body.title ?? JSON.stringify(body) : String(body ?? '');
  let message = `Fulfil answered ${status} to ${method} ${path}: ${detail}`;
  if (Array.isArray(body?.errors)) {
    for (const e of body.errors.slice(0, 20)) {
      message += `\n  - ${e.pointer ?? e.path ?? ''}: ${e.detail ?? e.message ?? ''}`;
    }
  }
  if (status === 401) message += '\n  (give the action a token: input `token`, config fulfil.token or FULFIL_TOKEN)';
  return new FulfilApiError(message, status, typeof body === 'object' && body ? body.code : undefined, body);
}

function describeFetchError(error: unknown): string {
  const e = error as { message?: string; cause?: { code?: string; message?: string } };
  const cause = e?.cause?.code ?? e?.cause?.message;
  return cause ? `${e?.message ?? error} (${cause})` : String(e?.message ?? error);
}
