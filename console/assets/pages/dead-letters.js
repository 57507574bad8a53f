// /ui/dead-letters: inbound messages that could not be used, each with its
// reason and bytes, and a Replay button that sends one through again.

import * as api from '../api.js';
import { h, mount, badge, time, json, link, toast, errorBox, dialog } from '../ui.js';
import { problemText, aborted } from '../filters.js';

const PAGE = 50;

export default async function render(ctx) {
  let items = [];
  let cursor = null;
  let bus = null;
  const expanded = new Set();
  const target = location.hash.startsWith('#dl-') ? location.hash.slice(4) : null;
  if (target) expanded.add(target);

  const box = h('div', { class: 'dead-letters-table' }, h('p', { class: 'muted', text: 'Loading…' }));
  const busBox = h('div');
  const problem = h('div');
  const more = h('button', { type: 'button', id: 'dead-letters-more', text: 'Load more', hidden: true, onclick: loadMore });
  mount(
    ctx.main,
    h(
      'div',
      { class: 'page-head' },
      h('h1', { text: 'Dead letters' }),
      h('span', { class: 'spacer' }),
      h('button', { type: 'button', id: 'dead-letters-refresh', text: 'Refresh', onclick: () => reload({ keep: true }) }),
    ),
    h(
      'p',
      { class: 'muted lead' },
      'Inbound messages Fulfil could not use: not a CloudEvent, or a trigger could not map or validate it. Fix the cause (the Promise, a var), then replay. The ',
      link('/ui/events', 'event ledger'),
      ' says what each trigger did.',
    ),
    busBox,
    problem,
    box,
    h('div', { class: 'more-row' }, more),
  );

  async function reload({ keep = false } = {}) {
    const limit = keep ? Math.min(Math.max(items.length, PAGE), 500) : PAGE;
    mount(problem);
    try {
      const page = await api.get('/dead-letters', { limit }, { signal: ctx.signal });
      items = page.items;
      cursor = page.next_cursor;
      bus = page.bus || null;
      draw();
    } catch (error) {
      if (aborted(error, ctx.signal)) return;
      if (items.length) mount(problem, errorBox(error, 'refresh the dead letters'));
      else mount(box, errorBox(error, 'list the dead letters'));
    }
  }

  async function loadMore() {
    more.disabled = true;
    try {
      const page = await api.get('/dead-letters', { cursor, limit: PAGE }, { signal: ctx.signal });
      const seen = new Set(items.map((d) => d.id));
      items = [...items, ...page.items.filter((d) => !seen.has(d.id))];
      cursor = page.next_cursor;
      draw();
    } catch (error) {
      if (!aborted(error, ctx.signal)) mount(problem, errorBox(error, 'load more dead letters'));
    } finally {
      more.disabled = false;
    }
  }

  function drawBus() {
    if (!bus) {
      mount(busBox);
      return;
    }
    const subjects = Object.entries(bus.subjects || {});
    mount(
      busBox,
      h(
        'div',
        { class: 'panel bus-summary', id: 'bus-dead-letters' },
        h('strong', { text: 'On the bus: ' }),
        `${bus.count} message${bus.count === 1 ? '' : 's'} that workers or the result applier dead-lettered, in stream `,
        h('code', { text: bus.stream }),
        subjects.length
          ? h('ul', { class: 'small' }, subjects.map(([s, n]) => h('li', {}, h('code', { text: s }), `: ${n}`)))
          : null,
      ),
    );
  }

  function draw() {
    drawBus();
    more.hidden = !cursor;
    const heads = ['', 'When', 'Subject / kind', 'Reason', 'Replays', 'Actions'];
    mount(
      box,
      h(
        'table',
        { class: 'grid dead-letters' },
        h('thead', {}, h('tr', {}, heads.map((t, i) => h('th', { scope: 'col' }, i === 0 ? h('span', { class: 'sr-only', text: 'Payload' }) : t)))),
        h(
          'tbody',
          {},
          items.length
            ? items.flatMap(rows)
            : h('tr', {}, h('td', { colspan: heads.length, class: 'muted', text: 'No dead letters. Every inbound message was used.' })),
        ),
      ),
    );
    if (target) box.querySelector(`tr[data-dead-letter-id="${CSS.escape(target)}"]`)?.scrollIntoView({ block: 'center' });
  }

  function rows(d) {
    const open = expanded.has(d.id);
    const detailId = `dl-detail-${d.id}`;
    const type = header(d, 'ce-type') || eventAttr(d, 'type');
    const toggle = h('button', {
      type: 'button',
      class: 'ghost expand',
      'aria-expanded': String(open),
      'aria-controls': detailId,
      'aria-label': `${open ? 'Hide' : 'Show'} the payload`,
      text: open ? '▾' : '▸',
      onclick: () => {
        if (expanded.has(d.id)) expanded.delete(d.id);
        else expanded.add(d.id);
        draw();
        box.querySelector(`tr[data-dead-letter-id="${CSS.escape(d.id)}"] button.expand`)?.focus();
      },
    });
    const replay = h('button', { type: 'button', class: 'replay', text: 'Replay', onclick: () => confirmReplay(d) });
    const row = h(
      'tr',
      { id: `dl-${d.id}`, class: target === d.id ? 'selected' : null, dataset: { deadLetterId: d.id, replays: String(d.replays) } },
      h('td', {}, toggle),
      h('td', {}, time(d.received_at)),
      h(
        'td',
        {},
        d.subject ? h('code', { text: d.subject }) : h('span', { text: 'HTTP' }),
        type ? h('div', { class: 'small muted' }, 'type ', h('code', { text: type })) : null,
      ),
      h('td', { class: 'reason' }, d.reason, d.ledger_id ? h('div', { class: 'small' }, link(`/ui/events?source=${encodeURIComponent(eventAttr(d, 'source') || '')}`, 'In the event ledger')) : null),
      h('td', {}, replays(d)),
      h('td', {}, replay),
    );
    if (!open) return [row];
    const headers = Object.entries(d.headers || {});
    return [
      row,
      h(
        'tr',
        { class: 'detail', id: detailId, dataset: { detailFor: d.id } },
        h(
          'td',
          { colspan: 6 },
          h(
            'div',
            { class: 'detail-grid' },
            h('div', {}, h('h3', { text: `Payload (${d.payload_encoding})` }), payload(d)),
            headers.length
              ? h('div', {}, h('h3', { text: 'Headers' }), h('dl', { class: 'kv small' }, headers.map(([k, v]) => [h('dt', {}, h('code', { text: k })), h('dd', { text: v.join(', ') })])))
              : null,
            d.last_replay ? h('div', {}, h('h3', { text: 'Last replay' }), json(d.last_replay)) : null,
            h('p', { class: 'small muted' }, 'Dead letter ', h('code', { text: d.id })),
          ),
        ),
      ),
    ];
  }

  function replays(d) {
    if (!d.replays) return h('span', { class: 'muted', text: 'never' });
    return h(
      'div',
      {},
      h('span', { text: `${d.replays}×, last ` }),
      time(d.replayed_at),
      h('div', { class: 'small' }, lastReplay(d.last_replay)),
    );
  }

  function confirmReplay(d) {
    dialog(
      'Replay this dead letter?',
      h(
        'div',
        {},
        h('p', {}, 'It is sent through the normal path again: triggers that match may file requests, and waiting steps may complete. An event already filed through a trigger is not filed twice.'),
        h('p', { class: 'small muted' }, d.subject ? ['Subject ', h('code', { text: d.subject }), '. '] : 'Posted over HTTP. ', 'Reason: ', d.reason),
      ),
      [
        { label: 'Cancel' },
        {
          label: 'Replay',
          kind: 'primary',
          onClick: async () => {
            try {
              const receipt = await api.post(`/dead-letters/${encodeURIComponent(d.id)}/replay`);
              toast(`Replayed: ${summarize(receipt)}`, receiptOk(receipt) ? 'ok' : 'error');
            } catch (error) {
              if (error instanceof api.ApiError && error.status === 401) return true;
              toast(`Replay failed: ${problemText(error)}`, 'error');
            }
            await reload({ keep: true });
            box.querySelector(`tr[data-dead-letter-id="${CSS.escape(d.id)}"] button.replay`)?.focus();
            return true;
          },
        },
      ],
    );
  }

  await reload();
}

function header(d, name) {
  const v = Object.entries(d.headers || {}).find(([k]) => k.toLowerCase() === name);
  return v?.[1]?.[0] || null;
}

/** An attribute of the payload when it is a structured CloudEvent. */
function eventAttr(d, name) {
  if (d.payload_encoding !== 'utf8') return null;
  try {
    const v = JSON.parse(d.payload);
    return v && typeof v === 'object' && typeof v[name] === 'string' ? v[name] : null;
  } catch {
    return null;
  }
}

function payload(d) {
  if (d.payload_encoding === 'utf8') {
    try {
      return json(JSON.parse(d.payload));
    } catch {
      return h('pre', { class: 'json', text: d.payload || '(empty)' });
    }
  }
  return h('div', {}, h('p', { class: 'small muted', text: 'Not UTF-8; shown as base64.' }), h('pre', { class: 'json', text: d.payload }));
}

/** What a replay did, in words. */
function summarize(receipt) {
  const outcomes = receipt?.outcomes || [];
  if (!outcomes.length && !receipt?.waits_completed?.length) return 'no trigger matched';
  const parts = outcomes.map((o) => `${o.trigger}: ${o.outcome}${o.reason ? ` (${o.reason})` : ''}`);
  if (receipt.waits_completed?.length) parts.push(`${receipt.waits_completed.length} wait(s) completed`);
  return parts.join('; ');
}

function receiptOk(receipt) {
  return !(receipt?.outcomes || []).some((o) => o.outcome === 'invalid');
}

function lastReplay(last) {
  if (!last) return null;
  if (last.not_a_cloudevent) return h('span', {}, badge('invalid'), ' still not a CloudEvent');
  const outcomes = last.outcomes || [];
  if (!outcomes.length) return h('span', { class: 'muted', text: 'no trigger matched' });
  return outcomes.map((o) =>
    h(
      'span',
      { class: 'replay-outcome' },
      badge(o.outcome),
      o.request_id ? [' ', link(`/ui/requests/${o.request_id}`, 'request')] : null,
      ' ',
    ),
  );
}
