// /ui/schedules/{name}[?outcome=]: one Schedule, its tick ledger (newest
// first) with the requests and runs the ticks filed, pause and resume.

import * as api from '../api.js';
import { h, mount, badge, time, json, link, errorBox } from '../ui.js';
import { field, select, aborted, idCode } from '../filters.js';
import { stateBadge, pauseButton } from '../schedule-actions.js';

const OUTCOMES = ['filed', 'skipped_overlap', 'missed', 'paused', 'buffered', 'failed', 'denied'];
const PAGE = 50;

export default async function render(ctx) {
  const name = ctx.params.name;
  let outcome = ctx.query.get('outcome') || '';
  let schedule;
  let ticks = [];
  let cursor = null;
  let generation = 0;
  /** request id -> its run id (null while unknown). */
  const runs = new Map();

  const head = h('div');
  const details = h('div');
  const ticksBox = h('div', { class: 'ticks-table' });
  const problem = h('div');
  const more = h('button', { type: 'button', id: 'ticks-more', text: 'Load more', hidden: true, onclick: loadMore });
  const outcomeSelect = select('filter-outcome', OUTCOMES, outcome, {
    onchange: (e) => {
      outcome = e.target.value;
      ctx.setQuery({ outcome });
      loadTicks();
    },
  });

  mount(
    ctx.main,
    h('p', { class: 'crumbs' }, link('/ui/schedules', 'Schedules'), ' / '),
    head,
    details,
    h('h2', { text: 'Ticks' }),
    h(
      'form',
      { class: 'toolbar', role: 'search', 'aria-label': 'Filter ticks', onsubmit: (e) => e.preventDefault() },
      field('Outcome', outcomeSelect),
      h('button', { type: 'button', id: 'ticks-refresh', text: 'Refresh', onclick: () => refresh() }),
    ),
    problem,
    ticksBox,
    h('div', { class: 'more-row' }, more),
  );

  function drawSchedule() {
    const s = schedule;
    mount(
      head,
      h(
        'div',
        { class: 'page-head' },
        h('h1', { id: 'schedule-name', text: s.name }),
        h('span', { id: 'schedule-state' }, stateBadge(s)),
        h('span', { class: 'spacer' }),
        pauseButton(s, (updated) => {
          schedule = updated;
          drawSchedule();
          head.querySelector('button')?.focus();
          loadTicks({ keep: true });
        }),
      ),
      s.document?.metadata?.description ? h('p', { class: 'lead', text: s.document.metadata.description }) : null,
    );
    const row = (label, value) => [h('dt', { text: label }), h('dd', {}, value ?? h('span', { class: 'muted', text: '—' }))];
    mount(
      details,
      h(
        'dl',
        { class: 'kv panel schedule-details' },
        row('Promise', link(`/ui/promises/${encodeURIComponent(s.promise)}`, s.promise)),
        row('Cron', h('code', { text: s.cron })),
        row('Timezone', s.timezone),
        row('Overlap', h('code', { text: s.overlap })),
        row('Catch up', s.catch_up),
        row('Owner', s.owner),
        row('Next fire', s.paused ? h('span', { class: 'muted', text: 'paused' }) : time(s.next_fire_at)),
        s.buffered_at ? row('Buffered tick', time(s.buffered_at)) : null,
        row('Last request', s.last_request_id ? link(`/ui/requests/${s.last_request_id}`, idCode(s.last_request_id)) : null),
        s.paused_at ? row('Paused', h('span', {}, time(s.paused_at), ` by ${s.paused_by || '?'}`)) : null,
        s.resumed_at ? row('Resumed', h('span', {}, time(s.resumed_at), ` by ${s.resumed_by || '?'}`)) : null,
        row('Applied', h('span', {}, time(s.created_at), ', updated ', time(s.updated_at))),
        row('Params', json(s.params ?? {})),
        row('Document', h('details', { class: 'inline-details' }, h('summary', { text: 'As applied' }), json(s.document))),
        row('Runs', link(`/ui/runs?promise=${encodeURIComponent(s.promise)}`, `Runs of ${s.promise}`)),
      ),
    );
  }

  async function loadTicks({ keep = false } = {}) {
    const gen = ++generation;
    const limit = keep ? Math.min(Math.max(ticks.length, PAGE), 500) : PAGE;
    if (!keep) mount(ticksBox, h('p', { class: 'muted', text: 'Loading…' }));
    mount(problem);
    try {
      const page = await api.get(`/schedules/${encodeURIComponent(name)}/ticks`, { outcome, limit }, { signal: ctx.signal });
      if (gen !== generation) return;
      ticks = page.items;
      cursor = page.next_cursor;
      drawTicks();
    } catch (error) {
      if (aborted(error, ctx.signal) || gen !== generation) return;
      mount(ticksBox, errorBox(error, `list the ticks of ${name}`));
      more.hidden = true;
    }
  }

  async function loadMore() {
    more.disabled = true;
    const gen = generation;
    try {
      const page = await api.get(`/schedules/${encodeURIComponent(name)}/ticks`, { outcome, cursor, limit: PAGE }, { signal: ctx.signal });
      if (gen !== generation) return;
      ticks = [...ticks, ...page.items];
      cursor = page.next_cursor;
      drawTicks();
    } catch (error) {
      if (!aborted(error, ctx.signal)) mount(problem, errorBox(error, 'load more ticks'));
    } finally {
      more.disabled = false;
    }
  }

  function runCell(requestId) {
    if (!requestId) return h('span', { class: 'muted', text: '—' });
    const run = runs.get(requestId);
    if (run === undefined) return h('span', { class: 'muted', text: '…' });
    return run ? link(`/ui/runs/${run}`, idCode(run)) : h('span', { class: 'muted', text: '—' });
  }

  function drawTicks() {
    more.hidden = !cursor;
    const heads = ['Due (nominal)', 'Decided', 'Outcome', 'Request', 'Run', 'Reason'];
    mount(
      ticksBox,
      h(
        'table',
        { class: 'grid ticks' },
        h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col', text: t })))),
        h(
          'tbody',
          {},
          ticks.length
            ? ticks.map((t) =>
                h(
                  'tr',
                  { dataset: { tick: t.nominal_at, outcome: t.outcome } },
                  h('td', {}, time(t.nominal_at)),
                  h('td', {}, time(t.fired_at)),
                  h('td', {}, badge(t.outcome)),
                  h('td', {}, t.request_id ? link(`/ui/requests/${t.request_id}`, idCode(t.request_id)) : h('span', { class: 'muted', text: '—' })),
                  h('td', { class: 'tick-run', dataset: { request: t.request_id || '' } }, runCell(t.request_id)),
                  h('td', { class: 'reason' }, t.reason || h('span', { class: 'muted', text: '—' })),
                ),
              )
            : h('tr', {}, h('td', { colspan: heads.length, class: 'muted', text: outcome ? `No ${outcome} ticks.` : 'No ticks yet.' })),
        ),
      ),
    );
    fillRuns();
  }

  /** The run of each filed tick's request, a few at a time. */
  async function fillRuns() {
    const wanted = [...new Set(ticks.map((t) => t.request_id).filter((id) => id && !runs.has(id)))];
    const worker = async () => {
      while (wanted.length && !ctx.signal.aborted) {
        const id = wanted.shift();
        try {
          const request = await api.get(`/requests/${id}`, {}, { signal: ctx.signal });
          runs.set(id, request.run_id || null);
        } catch (error) {
          if (aborted(error, ctx.signal)) return;
          runs.set(id, null);
        }
        for (const cell of ticksBox.querySelectorAll(`td.tick-run[data-request="${CSS.escape(id)}"]`)) mount(cell, runCell(id));
      }
    };
    await Promise.all([worker(), worker(), worker()]);
  }

  async function refresh() {
    await loadTicks({ keep: true });
    try {
      schedule = await api.get(`/schedules/${encodeURIComponent(name)}`, {}, { signal: ctx.signal });
      drawSchedule();
    } catch (error) {
      if (!aborted(error, ctx.signal)) problem.append(errorBox(error, `load schedule ${name}`));
    }
  }

  try {
    schedule = await api.get(`/schedules/${encodeURIComponent(name)}`, {}, { signal: ctx.signal });
  } catch (error) {
    if (aborted(error, ctx.signal)) return;
    mount(head, h('h1', { text: name }), errorBox(error, `load schedule ${name}`));
    // The ledger outlives a deleted schedule: still show it.
  }
  if (schedule) drawSchedule();
  await loadTicks();
}
