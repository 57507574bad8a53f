// A run's steps on a time axis (Gantt): one row per step, one bar per
// attempt. Waiting (dispatched, not yet started; or an engine-run wait)
// is drawn lighter, compensation attempts in the compensation colour.
//
//   renderTimeline(container, run, {onSelect, selected})
//
// Plain DOM with percentage positions (no re-layout on resize). Runs with
// thousands of steps show the first ROWS rows by start and a "show all"
// button. The container gets `data-testid="timeline"`.

import { duration } from './ui.js';

const ROWS = 200;
const NICE = [
  1, 2, 5, 10, 20, 50, 100, 200, 500,
  1e3, 2e3, 5e3, 10e3, 15e3, 30e3,
  60e3, 120e3, 300e3, 600e3, 900e3, 1800e3,
  3600e3, 7200e3, 10800e3, 21600e3, 43200e3, 86400e3, 172800e3, 604800e3,
];

const ms = (iso) => (iso ? Date.parse(iso) : null);

function stamp(t) {
  const d = new Date(t);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Draws `run`'s timeline into `container` (replacing what was there). */
export function renderTimeline(container, run, { onSelect, selected } = {}) {
  const state = (container.__timeline ||= { showAll: false });
  state.onSelect = onSelect;
  container.dataset.testid = 'timeline';
  container.classList.add('timeline');
  const now = Date.now();
  const open = !run.finished_at;
  const steps = run.steps || [];

  // Rows: steps by their first dispatch; never-dispatched ones last.
  const rows = steps.map((step, i) => {
    const starts = (step.attempts || []).map((a) => ms(a.dispatched_at)).filter((t) => t !== null);
    return { step, i, start: starts.length ? Math.min(...starts) : Infinity };
  });
  rows.sort((a, b) => a.start - b.start || a.i - b.i);

  // The span: from the run's creation to its end (or now, or the last bar).
  const t0 = ms(run.created_at) ?? Math.min(...rows.map((r) => r.start).filter(Number.isFinite), now);
  let t1 = ms(run.finished_at) ?? now;
  for (const { step } of rows) {
    for (const a of step.attempts || []) {
      t1 = Math.max(t1, ms(a.finished_at) ?? (open ? now : ms(a.started_at) ?? ms(a.dispatched_at)));
    }
  }
  const span = Math.max(t1 - t0, 1);
  const pct = (t) => `${(((t - t0) / span) * 100).toFixed(4)}%`;
  const width = (a, b) => `max(2px, ${(((b - a) / span) * 100).toFixed(4)}%)`;

  const shown = state.showAll ? rows : rows.slice(0, ROWS);
  const keepScroll = container.querySelector('.tl-body')?.scrollTop;

  const frag = document.createDocumentFragment();
  const caption = el('p', 'tl-caption muted');
  caption.textContent = `From ${stamp(t0)} over ${duration(span)}${open ? ' (running: up to now)' : ''} · ${steps.length.toLocaleString('en-US')} steps`;
  frag.append(caption);

  const legend = el('div', 'tl-legend muted');
  for (const [c, label] of [['tl-run st-succeeded', 'running → finished'], ['tl-wait st-running', 'waiting (dispatched, or waiting on the engine)'], ['tl-run tl-comp', 'compensation']]) {
    const item = el('span', 'tl-legend-item');
    item.append(el('span', `tl-swatch ${c}`), label);
    legend.append(item);
  }
  frag.append(legend);

  // The axis: nice ticks, labelled from the start.
  const step = NICE.find((n) => span / n <= 8) || span / 8;
  const axis = el('div', 'tl-row tl-axis');
  axis.append(el('div', 'tl-label muted', 'step'));
  const ticks = el('div', 'tl-track');
  for (let t = 0; t <= span + 1e-9; t += step) {
    const tick = el('span', 'tl-tick', t === 0 ? '0' : `+${duration(t)}`);
    tick.style.left = `${((t / span) * 100).toFixed(4)}%`;
    if (t / span > 0.93) tick.classList.add('tl-tick-end');
    ticks.append(tick);
  }
  axis.append(ticks);
  frag.append(axis);

  const body = el('div', 'tl-body');
  const gridStep = (step / span) * 100;
  for (const { step: s } of shown) {
    const row = el('div', `tl-row${s.id === selected ? ' selected' : ''}`);
    row.dataset.step = s.id;
    const label = el('div', 'tl-label');
    const button = el('button', 'tl-name');
    button.type = 'button';
    button.textContent = s.id;
    button.title = `${s.id}: ${s.status}`;
    button.dataset.step = s.id;
    const badge = el('span', `badge st-${s.status}`, s.status);
    label.append(button, badge);
    const track = el('div', 'tl-track');
    track.style.backgroundSize = `${gridStep}% 100%`;
    const attempts = s.attempts || [];
    if (!attempts.length) track.append(el('span', 'tl-none muted', s.status === 'skipped' ? 'skipped' : 'not started'));
    for (const a of attempts) {
      const d = ms(a.dispatched_at);
      const st = ms(a.started_at);
      const f = ms(a.finished_at);
      const end = f ?? (open ? now : st ?? d);
      const engineWait = !f && s.status === 'waiting';
      const kind = a.kind === 'compensation' ? ' tl-comp' : '';
      const title = [
        `${s.id} · attempt ${a.attempt}${a.kind === 'compensation' ? ' (compensation)' : ''} · ${a.status}`,
        `handler ${a.handler}${a.worker ? ` on ${a.worker}` : ''}`,
        `dispatched ${stamp(d)}`,
        st !== null ? `started ${stamp(st)} (waited ${duration(st - d)})` : 'not started',
        f !== null ? `finished ${stamp(f)}` : 'not finished',
        st !== null ? `ran ${duration((f ?? now) - st)}${f === null ? ' so far' : ''}` : null,
        a.error ? `error: ${a.error.code || ''} ${a.error.message || ''}`.trim() : null,
      ].filter(Boolean).join('\n');
      const waitEnd = st ?? end;
      if (waitEnd > d || st === null) {
        const w = el('span', `tl-bar tl-wait st-${a.status}${kind}`);
        w.style.left = pct(d);
        w.style.width = width(d, waitEnd);
        w.title = title;
        track.append(w);
      }
      if (st !== null) {
        const r = el('span', `tl-bar ${engineWait ? 'tl-wait' : 'tl-run'} st-${engineWait ? 'waiting' : a.status}${kind}`);
        r.style.left = pct(st);
        r.style.width = width(st, end);
        r.title = title;
        if (a.status === 'failed' || a.status === 'timed_out') r.classList.add('tl-failed');
        track.append(r);
      }
    }
    row.append(label, track);
    body.append(row);
  }
  frag.append(body);

  if (rows.length > shown.length) {
    const more = el('button', 'tl-more', `Show all ${rows.length.toLocaleString('en-US')} steps`);
    more.type = 'button';
    more.addEventListener('click', () => {
      state.showAll = true;
      renderTimeline(container, run, { onSelect: state.onSelect, selected });
    });
    const note = el('p', 'muted');
    note.append(`Showing the first ${shown.length} steps by start. `, more);
    frag.append(note);
  }

  container.replaceChildren(frag);
  if (keepScroll) container.querySelector('.tl-body').scrollTop = keepScroll;
  if (!container.__timelineWired) {
    container.__timelineWired = true;
    container.addEventListener('click', (event) => {
      const b = event.target.closest('button.tl-name');
      if (b) container.__timeline.onSelect?.(b.dataset.step);
    });
  }
}
