// /ui/schedules: every Schedule with its next fire time and last tick,
// paused or resumed from here.

import * as api from '../api.js';
import { h, mount, badge, time, link, errorBox } from '../ui.js';
import { all, aborted } from '../filters.js';
import { stateBadge, pauseButton } from '../schedule-actions.js';

export default async function render(ctx) {
  let schedules = null;
  const lastTicks = new Map();
  const box = h('div', { class: 'schedules-table' }, h('p', { class: 'muted', text: 'Loading…' }));
  mount(
    ctx.main,
    h(
      'div',
      { class: 'page-head' },
      h('h1', { text: 'Schedules' }),
      h('span', { class: 'spacer' }),
      h('button', { type: 'button', id: 'schedules-refresh', text: 'Refresh', onclick: () => load() }),
    ),
    h('p', { class: 'muted lead' }, 'Requests filed on a clock. Times are in your local time; hover one for UTC.'),
    box,
  );

  const heads = ['Name', 'Promise', 'Cron', 'Timezone', 'State', 'Next fire', 'Last tick', 'Actions'];

  function lastTick(name) {
    const last = lastTicks.get(name);
    if (last === undefined) return h('span', { class: 'muted', text: '…' });
    if (last === null) return h('span', { class: 'muted', text: 'none yet' });
    return [time(last.nominal_at), ' ', badge(last.outcome)];
  }

  function row(s) {
    const tr = h(
      'tr',
      { dataset: { schedule: s.name, state: s.paused ? 'paused' : 'active' } },
      h('td', {}, link(`/ui/schedules/${encodeURIComponent(s.name)}`, s.name)),
      h('td', {}, link(`/ui/promises/${encodeURIComponent(s.promise)}`, s.promise)),
      h('td', {}, h('code', { text: s.cron })),
      h('td', { text: s.timezone }),
      h('td', {}, stateBadge(s)),
      h('td', {}, s.paused ? h('span', { class: 'muted', text: 'paused' }) : time(s.next_fire_at)),
      h('td', { class: 'last-tick' }, lastTick(s.name)),
      h(
        'td',
        {},
        pauseButton(s, (updated) => {
          const i = schedules.findIndex((x) => x.name === updated.name);
          if (i >= 0) schedules[i] = updated;
          const fresh = row(updated);
          tr.replaceWith(fresh);
          fresh.querySelector('button')?.focus();
        }),
      ),
    );
    return tr;
  }

  function draw() {
    mount(
      box,
      h(
        'table',
        { class: 'grid schedules' },
        h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col', text: t })))),
        h(
          'tbody',
          {},
          schedules.length
            ? schedules.map(row)
            : h('tr', {}, h('td', { colspan: heads.length, class: 'muted', text: 'No schedules yet: apply one with fulfil apply -f FILE.' })),
        ),
      ),
    );
  }

  async function load() {
    try {
      schedules = await all('/schedules', {}, { signal: ctx.signal });
    } catch (error) {
      if (!aborted(error, ctx.signal)) mount(box, errorBox(error, 'list the schedules'));
      return;
    }
    draw();
    // The last tick of each, a few at a time.
    const queue = [...schedules];
    const worker = async () => {
      while (queue.length && !ctx.signal.aborted) {
        const s = queue.shift();
        try {
          const page = await api.get(`/schedules/${encodeURIComponent(s.name)}/ticks`, { limit: 1 }, { signal: ctx.signal });
          lastTicks.set(s.name, page.items[0] || null);
        } catch (error) {
          if (aborted(error, ctx.signal)) return;
          lastTicks.set(s.name, null);
        }
        const cell = box.querySelector(`tr[data-schedule="${CSS.escape(s.name)}"] td.last-tick`);
        if (cell) mount(cell, lastTick(s.name));
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
  }

  await load();
}
