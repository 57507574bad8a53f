// /ui/runs (and /ui): every run, newest first, filtered by the URL's query
// (`GET /v1/runs` filters), sortable by start and duration, live.

import * as api from '../api.js';
import { h, mount, badge, time, duration, runDuration, link, errorBox, table, every } from '../ui.js';
import { field, select, text, datetime, fromLocalInput, toLocalInput, RANGES, bindFilters, all, problemText, aborted, idCode } from '../filters.js';

const STATUSES = ['pending', 'running', 'succeeded', 'failed', 'compensating', 'compensated', 'cancelled'];
const KINDS = ['configure', 'delete', 'reconcile'];
const WAITING = [
  ['retry', 'retry (backing off)'],
  ['event', 'event'],
  ['approval', 'approval'],
  ['sleep', 'sleep'],
  ['worker', 'worker'],
];
/** The `GET /v1/runs` filters the URL carries, by query name. */
const FILTERS = ['status', 'promise', 'kind', 'owner', 'waiting_for', 'since', 'until', 'request'];
const PAGE = 50;
const LIVE_MS = 3000;

export default async function render(ctx) {
  const q = ctx.query;
  const filters = Object.fromEntries(FILTERS.map((k) => [k, q.get(k) || '']));
  let sort = sortFromQuery(q);
  let items = [];
  let cursor = null;
  let shownKey = null;
  let generation = 0; // a reload makes answers to earlier fetches stale

  const tableBox = h('div', { class: 'runs-table', 'aria-live': 'off' });
  const more = h('button', { type: 'button', id: 'runs-more', text: 'Load more', hidden: true, onclick: loadMore });
  const live = h('span', { class: 'muted live-status' });
  const problem = h('div');

  // The filter bar: every change goes into the URL, then the list reloads.
  const { apply, onChange } = bindFilters(ctx, filters, reload);
  const promiseSelect = select('filter-promise', [], filters.promise, { onchange: onChange('promise') });
  const teams = h('datalist', { id: 'teams-list' });
  const since = datetime('filter-since', filters.since, {
    onchange: (e) => apply({ since: fromLocalInput(e.target.value) }),
  });
  const until = datetime('filter-until', filters.until, {
    onchange: (e) => apply({ until: fromLocalInput(e.target.value) }),
  });
  const controls = {
    status: select('filter-status', STATUSES, filters.status, { onchange: onChange('status') }),
    promise: promiseSelect,
    kind: select('filter-kind', KINDS, filters.kind, { onchange: onChange('kind') }),
    owner: text('filter-team', filters.owner, { placeholder: 'team-…', onchange: onChange('owner'), list: 'teams-list' }),
    waiting_for: select('filter-waiting-for', WAITING, filters.waiting_for, { onchange: onChange('waiting_for') }),
  };
  const quick = RANGES.map(([label, ms]) =>
    h('button', {
      type: 'button',
      class: 'quick-range',
      text: label,
      onclick: () => {
        const from = new Date(Date.now() - ms).toISOString();
        since.value = toLocalInput(from);
        until.value = '';
        apply({ since: from, until: '' });
      },
    }),
  );
  const clear = h('button', {
    type: 'button',
    class: 'ghost',
    id: 'runs-clear',
    text: 'Clear filters',
    onclick: () => {
      const empty = Object.fromEntries(FILTERS.map((k) => [k, '']));
      for (const c of Object.values(controls)) c.value = '';
      since.value = '';
      until.value = '';
      apply(empty);
      renderRequestChip();
    },
  });
  const requestChip = h('div', { class: 'chips' });
  function renderRequestChip() {
    mount(
      requestChip,
      filters.request
        ? h(
            'span',
            { class: 'chip' },
            'Request ',
            link(`/ui/requests/${encodeURIComponent(filters.request)}`, idCode(filters.request)),
            h('button', {
              type: 'button',
              class: 'ghost chip-remove',
              'aria-label': 'Remove the request filter',
              text: '✕',
              onclick: () => {
                apply({ request: '' });
                renderRequestChip();
              },
            }),
          )
        : null,
    );
  }
  renderRequestChip();

  mount(
    ctx.main,
    h('div', { class: 'page-head' }, h('h1', { text: 'Runs' }), h('span', { class: 'spacer' }), live),
    h(
      'form',
      { class: 'toolbar', role: 'search', 'aria-label': 'Filter runs', onsubmit: (e) => e.preventDefault() },
      field('Status', controls.status),
      field('Promise', controls.promise),
      field('Kind', controls.kind),
      field('Team', controls.owner),
      teams,
      field('Waiting for', controls.waiting_for),
      field('Since', since),
      field('Until', until),
      h('div', { class: 'field quick' }, h('span', { class: 'quick-label', text: 'Quick range' }), h('div', { class: 'row tight' }, quick)),
      clear,
    ),
    requestChip,
    problem,
    tableBox,
    h('div', { class: 'more-row' }, more),
  );

  // The Promise select and the team suggestions come from the catalog.
  all('/promises', {}, { signal: ctx.signal })
    .then((promises) => {
      const names = promises.map((p) => p.name);
      const current = promiseSelect.value;
      mount(
        promiseSelect,
        h('option', { value: '', text: 'Any' }),
        [...new Set([...names, ...(current ? [current] : [])])].map((n) =>
          h('option', { value: n, text: n, selected: n === current }),
        ),
      );
      const owners = [...new Set(promises.map((p) => p.owner).filter(Boolean))].sort();
      mount(teams, owners.map((o) => h('option', { value: o })));
    })
    .catch((error) => {
      if (!aborted(error, ctx.signal)) problem.append(errorBox(error, 'list the Promises for the filter'));
    });

  function query(extra) {
    return { ...filters, ...extra };
  }

  /** Fetches the first page again (as many runs as are shown) and redraws if anything changed. */
  async function refresh({ replace = false } = {}) {
    const want = replace ? PAGE : Math.min(Math.max(items.length, PAGE), 500);
    const gen = generation;
    const page = await api.get('/runs', query({ limit: want }), { signal: ctx.signal });
    if (gen !== generation) return;
    if (replace || items.length <= 500) {
      items = page.items;
      cursor = page.next_cursor;
    } else {
      const seen = new Set(page.items.map((r) => r.id));
      items = [...page.items, ...items.slice(want).filter((r) => !seen.has(r.id))];
    }
    draw();
  }

  async function reload() {
    generation += 1;
    shownKey = null;
    items = [];
    cursor = null;
    mount(problem);
    mount(tableBox, h('p', { class: 'muted', text: 'Loading…' }));
    try {
      await refresh({ replace: true });
      stamp();
    } catch (error) {
      if (aborted(error, ctx.signal)) return;
      mount(tableBox, errorBox(error, 'list the runs'));
      more.hidden = true;
    }
  }

  async function loadMore() {
    if (!cursor) return;
    more.disabled = true;
    const gen = generation;
    try {
      const page = await api.get('/runs', query({ cursor, limit: PAGE }), { signal: ctx.signal });
      if (gen !== generation) return;
      const seen = new Set(items.map((r) => r.id));
      items = [...items, ...page.items.filter((r) => !seen.has(r.id))];
      cursor = page.next_cursor;
      draw();
    } catch (error) {
      if (!aborted(error, ctx.signal)) problem.replaceChildren(errorBox(error, 'load more runs'));
    } finally {
      more.disabled = false;
    }
  }

  const columns = [
    { key: 'id', label: 'Run', render: (r) => link(`/ui/runs/${r.id}`, idCode(r.id)) },
    { key: 'promise', label: 'Promise', render: (r) => link(`/ui/promises/${encodeURIComponent(r.promise)}`, r.promise) },
    { key: 'version', label: 'Version', render: (r) => r.promise_version },
    { key: 'kind', label: 'Kind', render: (r) => r.kind },
    { key: 'status', label: 'Status', render: (r) => badge(r.status) },
    {
      key: 'waiting',
      label: 'Waiting for',
      render: (r) => (r.waiting_for?.length ? waitingText(r.waiting_for) : h('span', { class: 'muted', text: '—' })),
    },
    { key: 'owner', label: 'Team', render: (r) => r.owner || h('span', { class: 'muted', text: '—' }) },
    { key: 'started', label: 'Started', sort: (r) => r.created_at, render: (r) => time(r.created_at) },
    {
      key: 'duration',
      label: 'Duration',
      sort: (r) => runDuration(r),
      render: (r) =>
        h('span', {
          class: 'run-duration',
          dataset: r.finished_at ? {} : { since: r.created_at },
          text: duration(runDuration(r)),
        }),
    },
  ];

  /** Redraws the table when what it shows changed; else only the running durations tick. */
  function draw() {
    const key = JSON.stringify([
      sort,
      items.map((r) => [r.id, r.status, r.finished_at, r.waiting_for, r.owner]),
    ]);
    more.hidden = !cursor;
    if (key === shownKey) {
      for (const el of tableBox.querySelectorAll('.run-duration[data-since]')) {
        el.textContent = duration(Date.now() - new Date(el.dataset.since));
      }
      return;
    }
    shownKey = key;
    const focused = tableBox.contains(document.activeElement) ? focusKey(document.activeElement) : null;
    const filtered = FILTERS.some((k) => filters[k]);
    mount(
      tableBox,
      table(columns, items, {
        sort,
        onSort: (next) => {
          sort = next;
          ctx.setQuery({ sort: next.key, dir: next.dir });
          draw();
        },
        empty: filtered ? 'No run matches these filters.' : 'No runs yet. File a request from a Promise page.',
        rowAttrs: (r) => ({ dataset: { runId: r.id, status: r.status } }),
      }),
    );
    if (focused) restoreFocus(focused);
  }

  function focusKey(el) {
    const th = el.closest('th');
    if (th) return { th: [...th.parentElement.children].indexOf(th) };
    const a = el.closest('a[href]');
    return a ? { href: a.getAttribute('href') } : null;
  }
  function restoreFocus(key) {
    const el =
      key.th !== undefined
        ? tableBox.querySelectorAll('thead th')[key.th]?.querySelector('button')
        : [...tableBox.querySelectorAll('a[href]')].find((a) => a.getAttribute('href') === key.href);
    el?.focus();
  }

  function stamp(failed) {
    const now = new Date();
    const t = now.toLocaleTimeString();
    live.textContent = failed ? `Live updates failing (${failed}); retrying` : `Live · updated ${t}`;
    live.classList.toggle('live-failed', Boolean(failed));
  }

  await reload();
  if (ctx.signal.aborted) return;
  // Live: the shown pages again every 3 s while the page is open.
  let busy = false;
  const stop = every(LIVE_MS, async () => {
    if (busy || ctx.signal.aborted) return;
    busy = true;
    try {
      await refresh();
      stamp();
    } catch (error) {
      if (!aborted(error, ctx.signal)) stamp(problemText(error));
    } finally {
      busy = false;
    }
  });
  ctx.signal.addEventListener('abort', stop, { once: true });
}

function sortFromQuery(q) {
  const key = q.get('sort');
  const dir = q.get('dir') === 'asc' ? 'asc' : 'desc';
  if (key === 'started' || key === 'duration') return { key, dir };
  return { key: 'started', dir: 'desc' };
}

/** `["event", "event", "worker"]` as `event ×2, worker`. */
function waitingText(list) {
  const counts = new Map();
  for (const w of list) counts.set(w, (counts.get(w) || 0) + 1);
  return h(
    'span',
    { class: 'waiting' },
    [...counts].map(([w, n], i) => [i ? ', ' : '', h('span', { class: `wait-kind wait-${w}`, text: n > 1 ? `${w} ×${n}` : w })]),
  );
}
