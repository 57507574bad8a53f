// Small DOM helpers shared by the pages. No framework: pages build DOM
// with `h` and replace what changed.

/**
 * Creates an element. `attrs` keys: `class`, `text`, `on<event>` handlers,
 * `dataset`, `style` (object), boolean attributes as true/false, the rest
 * as attributes. Children may be nodes, strings, arrays or null.
 */
export function h(tag, attrs = {}, ...children) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.setAttribute('class', value);
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'style' && typeof value === 'object') Object.assign(el.style, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A status badge; the class colours it, the text says it. */
export function badge(status, extra = '') {
  return h('span', { class: `badge st-${status} ${extra}`.trim(), text: status });
}

/** `2026-12-03 01:02:03` in local time, with the ISO time as a tooltip. */
export function time(iso) {
  if (!iso) return h('span', { class: 'muted', text: '—' });
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return h('time', { datetime: iso, title: iso, text });
}

/** Milliseconds as `850 ms`, `12.4 s`, `3 m 05 s`, `2 h 03 m`. */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} m`;
}

/** A run's duration: to its end, or to now while it runs. */
export function runDuration(run) {
  if (!run.created_at) return null;
  const end = run.finished_at ? new Date(run.finished_at) : new Date();
  return end - new Date(run.created_at);
}

/** Pretty JSON in a <pre>. */
export function json(value) {
  return h('pre', { class: 'json', text: JSON.stringify(value, null, 2) });
}

/**
 * A short id: `…` and the last 8 characters, the whole id as tooltip.
 * (Ids are UUIDv7, whose first characters are a timestamp: every run of
 * the same minute would look alike.)
 */
export function shortId(id) {
  return h('code', { title: id, text: `…${String(id).slice(-8)}` });
}

/** A link inside the console (the router intercepts clicks on it). */
export function link(href, ...children) {
  return h('a', { href }, ...children);
}

/** Shows a transient message; `kind` is `ok` or `error`. */
export function toast(message, kind = 'ok') {
  const box = document.getElementById('toasts');
  const el = h('div', { class: `toast ${kind}`, text: message });
  box.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 4000);
}

/** An error box for a failed load, naming what failed. */
export function errorBox(error, what) {
  const detail = error?.problem?.detail || error?.message || String(error);
  return h('div', { class: 'error-box', role: 'alert' }, h('strong', { text: `Could not ${what}: ` }), detail);
}

/**
 * A modal dialog (native <dialog>, so focus is trapped and Escape closes
 * it). `body` is a node; `actions` are [{label, kind, onClick}] where
 * onClick may return a promise; the dialog closes when it resolves truthy.
 */
export function dialog(title, body, actions) {
  const el = h('dialog', { class: 'modal', 'aria-label': title });
  const footer = h('div', { class: 'actions' });
  for (const action of actions) {
    const button = h('button', {
      type: 'button',
      class: action.kind || '',
      text: action.label,
      onclick: async () => {
        button.disabled = true;
        try {
          const close = action.onClick ? await action.onClick() : true;
          if (close !== false) el.close();
        } finally {
          button.disabled = false;
        }
      },
    });
    footer.append(button);
  }
  mount(el, h('h2', { text: title }), body, footer);
  el.addEventListener('close', () => el.remove());
  document.body.append(el);
  el.showModal();
  return el;
}

/**
 * A sortable table. `columns`: [{key, label, render(row), sort(row)}];
 * clicking (or Enter on) a sortable header sorts by it; `state` {key, dir}
 * is kept by the caller so a re-render keeps the order (and the URL can
 * carry it). `onSort(state)` is called when the user changes it.
 */
export function table(columns, rows, { sort, onSort, empty = 'Nothing here.', rowAttrs } = {}) {
  let sorted = rows;
  const col = sort && columns.find((c) => c.key === sort.key && c.sort);
  if (col) {
    const dir = sort.dir === 'asc' ? 1 : -1;
    sorted = [...rows].sort((a, b) => {
      const x = col.sort(a);
      const y = col.sort(b);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * dir;
    });
  }
  const head = h(
    'tr',
    {},
    columns.map((c) => {
      if (!c.sort) return h('th', { scope: 'col', text: c.label });
      const active = sort?.key === c.key;
      const next = { key: c.key, dir: active && sort.dir === 'desc' ? 'asc' : 'desc' };
      return h(
        'th',
        { scope: 'col', 'aria-sort': active ? (sort.dir === 'asc' ? 'ascending' : 'descending') : 'none' },
        h(
          'button',
          { type: 'button', class: 'sort', onclick: () => onSort?.(next) },
          c.label,
          active ? (sort.dir === 'asc' ? ' ▲' : ' ▼') : '',
        ),
      );
    }),
  );
  const body = sorted.length
    ? sorted.map((row) => h('tr', rowAttrs ? rowAttrs(row) : {}, columns.map((c) => h('td', {}, c.render(row)))))
    : [h('tr', {}, h('td', { colspan: columns.length, class: 'muted', text: empty }))];
  return h('table', { class: 'grid' }, h('thead', {}, head), h('tbody', {}, body));
}

/** Runs `fn` every `ms` while the page is shown; returns a stop function. */
export function every(ms, fn) {
  const id = setInterval(() => {
    if (!document.hidden) fn();
  }, ms);
  return () => clearInterval(id);
}
