// /ui/events[?type=&source=&outcome=&since=]: the event ledger, newest
// first: each event with what every trigger did with it and why.

import * as api from '../api.js';
import { h, mount, badge, time, json, link, errorBox } from '../ui.js';
import { field, select, text, datetime, fromLocalInput, toLocalInput, RANGES, bindFilters, aborted, idCode } from '../filters.js';

const OUTCOMES = ['filed', 'duplicate', 'filtered', 'invalid'];
const FILTERS = ['type', 'source', 'outcome', 'since'];
const PAGE = 50;

export default async function render(ctx) {
  const filters = Object.fromEntries(FILTERS.map((k) => [k, ctx.query.get(k) || '']));
  let items = [];
  let cursor = null;
  const expanded = new Set();
  let generation = 0;

  const box = h('div', { class: 'events-table' });
  const more = h('button', { type: 'button', id: 'events-more', text: 'Load more', hidden: true, onclick: loadMore });
  const problem = h('div');
  const { apply, onChange } = bindFilters(ctx, filters, reload);
  const since = datetime('filter-since', filters.since, { onchange: (e) => apply({ since: fromLocalInput(e.target.value) }) });
  const controls = [
    field('Type', text('filter-type', filters.type, { placeholder: 'com.acme.…', onchange: onChange('type') })),
    field('Source', text('filter-source', filters.source, { placeholder: '/hr', onchange: onChange('source') })),
    field('Outcome', select('filter-outcome', OUTCOMES, filters.outcome, { onchange: onChange('outcome') })),
    field('Since', since),
    h(
      'div',
      { class: 'field quick' },
      h('span', { class: 'quick-label', text: 'Quick range' }),
      h(
        'div',
        { class: 'row tight' },
        RANGES.map(([label, ms]) =>
          h('button', {
            type: 'button',
            class: 'quick-range',
            text: label,
            onclick: () => {
              const from = new Date(Date.now() - ms).toISOString();
              since.value = toLocalInput(from);
              apply({ since: from });
            },
          }),
        ),
      ),
    ),
    h('button', { type: 'button', id: 'events-refresh', text: 'Refresh', onclick: () => reload({ keep: true }) }),
  ];

  mount(
    ctx.main,
    h('div', { class: 'page-head' }, h('h1', { text: 'Events' })),
    h('p', { class: 'muted lead', text: 'Every CloudEvent received, and what each trigger did with it and why.' }),
    h('form', { class: 'toolbar', role: 'search', 'aria-label': 'Filter events', onsubmit: (e) => e.preventDefault() }, controls),
    problem,
    box,
    h('div', { class: 'more-row' }, more),
  );

  async function reload({ keep = false } = {}) {
    const gen = ++generation;
    const limit = keep ? Math.min(Math.max(items.length, PAGE), 500) : PAGE;
    if (!keep) mount(box, h('p', { class: 'muted', text: 'Loading…' }));
    mount(problem);
    try {
      const page = await api.get('/events', { ...filters, limit }, { signal: ctx.signal });
      if (gen !== generation) return;
      items = page.items;
      cursor = page.next_cursor;
      draw();
    } catch (error) {
      if (aborted(error, ctx.signal) || gen !== generation) return;
      if (keep && items.length) problem.append(errorBox(error, 'refresh the event ledger'));
      else mount(box, errorBox(error, 'list the events'));
      more.hidden = true;
    }
  }

  async function loadMore() {
    more.disabled = true;
    const gen = generation;
    try {
      const page = await api.get('/events', { ...filters, cursor, limit: PAGE }, { signal: ctx.signal });
      if (gen !== generation) return;
      const seen = new Set(items.map((e) => e.ledger_id));
      items = [...items, ...page.items.filter((e) => !seen.has(e.ledger_id))];
      cursor = page.next_cursor;
      draw();
    } catch (error) {
      if (!aborted(error, ctx.signal)) mount(problem, errorBox(error, 'load more events'));
    } finally {
      more.disabled = false;
    }
  }

  function draw() {
    more.hidden = !cursor;
    const heads = ['', 'Received', 'Type', 'Source', 'Event id', 'Outcome', 'Requests filed', 'Received by'];
    const body = items.length
      ? items.flatMap((e) => rows(e))
      : [h('tr', {}, h('td', { colspan: heads.length, class: 'muted', text: FILTERS.some((k) => filters[k]) ? 'No event matches these filters.' : 'No events received yet.' }))];
    mount(
      box,
      h(
        'table',
        { class: 'grid events' },
        h('thead', {}, h('tr', {}, heads.map((t, i) => h('th', { scope: 'col' }, i === 0 ? h('span', { class: 'sr-only', text: 'Details' }) : t)))),
        h('tbody', {}, body),
      ),
    );
  }

  function rows(e) {
    const id = e.ledger_id;
    const open = expanded.has(id);
    const detailId = `event-detail-${id}`;
    const toggle = h('button', {
      type: 'button',
      class: 'ghost expand',
      'aria-expanded': String(open),
      'aria-controls': detailId,
      'aria-label': `${open ? 'Hide' : 'Show'} the data of event ${e.id}`,
      text: open ? '▾' : '▸',
      onclick: () => {
        if (expanded.has(id)) expanded.delete(id);
        else expanded.add(id);
        const focus = id;
        draw();
        box.querySelector(`tr[data-event-id="${CSS.escape(focus)}"] button.expand`)?.focus();
      },
    });
    const outcomes = e.outcomes || [];
    const filed = outcomes.filter((o) => o.request_id);
    const row = h(
      'tr',
      { dataset: { eventId: id, type: e.type } },
      h('td', {}, toggle),
      h('td', {}, time(e.received_at)),
      h('td', {}, h('code', { text: e.type })),
      h('td', {}, h('code', { text: e.source }), e.via ? h('div', { class: 'small muted' }, `via ${e.via}`, e.nats_subject ? [' ', h('code', { text: e.nats_subject })] : null) : null),
      h('td', {}, h('code', { title: e.id, text: e.id.length > 24 ? `${e.id.slice(0, 24)}…` : e.id })),
      h(
        'td',
        { class: 'outcomes' },
        outcomes.length
          ? outcomes.map((o) =>
              h(
                'div',
                { class: 'outcome', dataset: { trigger: o.trigger, outcome: o.outcome } },
                badge(o.outcome),
                ' ',
                h('span', { class: 'small' }, link(`/ui/promises/${encodeURIComponent(o.promise)}`, o.promise), ' / ', h('code', { text: o.trigger })),
                o.reason ? h('div', { class: 'reason small', text: o.reason }) : null,
              ),
            )
          : h('div', {}, badge('unmatched'), h('div', { class: 'reason small muted', text: 'No trigger matched this event.' })),
        e.waits_completed?.length
          ? h('div', { class: 'small' }, 'Completed waits: ', e.waits_completed.map((w, i) => [i ? ', ' : '', link(`/ui/runs/${w.run_id}`, idCode(w.run_id)), ` ${w.step}`]))
          : null,
        e.dead_letter_id ? h('div', { class: 'small' }, link(`/ui/dead-letters#dl-${e.dead_letter_id}`, 'Kept as a dead letter')) : null,
      ),
      h(
        'td',
        {},
        filed.length
          ? filed.map((o) =>
              h(
                'div',
                { class: 'filed' },
                'request ',
                link(`/ui/requests/${o.request_id}`, idCode(o.request_id)),
                o.run_id ? [' · run ', link(`/ui/runs/${o.run_id}`, idCode(o.run_id))] : null,
                o.outcome === 'duplicate' ? h('span', { class: 'muted small', text: ' (earlier)' }) : null,
              ),
            )
          : h('span', { class: 'muted', text: '—' }),
      ),
      h('td', {}, e.received_by || h('span', { class: 'muted', text: e.via === 'bus' ? 'bus' : '—' })),
    );
    if (!open) return [row];
    const violations = outcomes.flatMap((o) => (o.violations || []).map((v) => ({ ...v, trigger: o.trigger })));
    const detail = h(
      'tr',
      { class: 'detail', id: detailId, dataset: { detailFor: id } },
      h(
        'td',
        { colspan: 8 },
        h(
          'div',
          { class: 'detail-grid' },
          h('div', {}, h('h3', { text: 'Event' }), json(e.event)),
          violations.length
            ? h(
                'div',
                {},
                h('h3', { text: 'Schema violations' }),
                h('ul', {}, violations.map((v) => h('li', {}, h('code', { text: v.pointer || '/' }), ` ${v.message} `, h('span', { class: 'muted', text: `(${v.trigger})` })))),
              )
            : null,
          h('p', { class: 'small muted' }, 'Ledger entry ', h('code', { text: id })),
        ),
      ),
    );
    return [row, detail];
  }

  await reload();
}
