// The console's only way to the server: `/v1` with the session's token.
//
// A token entered once is kept in sessionStorage (gone when the tab
// closes). Without one, calls go out bare, which is all `fulfil dev`
// (--auth none) needs; a 401 asks for a token and the page reloads its data.

const TOKEN_KEY = 'fulfil.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer other than 2xx: the problem document's fields, if any. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
  get code() {
    return this.problem.code;
  }
}

let onUnauthorized = () => {};
/** Called with the ApiError of a 401, once per burst. */
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

function headers(extra = {}) {
  const h = { Accept: 'application/json', ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

function url(path, query) {
  const u = new URL(`/v1${path}`, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, v);
  }
  return u;
}

async function answer(response) {
  const text = await response.text();
  let body = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = { detail: text };
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, body);
    if (response.status === 401) onUnauthorized(error);
    throw error;
  }
  return body;
}

export async function get(path, query, { signal } = {}) {
  return answer(await fetch(url(path, query), { headers: headers(), signal }));
}

/** `options.headers` adds headers (e.g. `Fulfil-Actor` where access control is off). */
export async function post(path, body, query, options = {}) {
  return answer(
    await fetch(url(path, query), {
      method: 'POST',
      headers: headers({ 'Content-Type': 'application/json', ...(options.headers || {}) }),
      body: body === undefined ? undefined : JSON.stringify(body),
    }),
  );
}

export async function del(path, query) {
  return answer(await fetch(url(path, query), { method: 'DELETE', headers: headers() }));
}

/**
 * Follows a server-sent event stream (EventSource cannot send a token):
 * calls `onEvent({id, event, data})` for each event, with `data` parsed as
 * JSON, until the stream ends (resolves) or `signal` aborts it. Reconnects
 * after a dropped connection from the last id seen, a bounded number of times.
 */
export async function stream(path, onEvent, { signal, after = 0, retries = 20 } = {}) {
  let last = after;
  for (let attempt = 0; attempt <= retries && !signal?.aborted; attempt++) {
    try {
      const response = await fetch(url(path, { after: last }), {
        headers: headers({ Accept: 'text/event-stream' }),
        signal,
      });
      if (!response.ok) return answer(response);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = { id: null, event: 'message', data: '' };
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'id') event.id = val;
            else if (field === 'event') event.event = val;
            else if (field === 'data') event.data += (event.data ? '\n' : '') + val;
          }
          if (event.id !== null && /^\d+$/.test(event.id)) last = Number(event.id);
          try {
            event.data = event.data ? JSON.parse(event.data) : null;
          } catch {
            /* keep the text */
          }
          onEvent(event);
        }
      }
    } catch (error) {
      if (signal?.aborted || error instanceof ApiError) throw error;
      await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** attempt, 5000)));
    }
  }
}
