// The run page (/ui/runs/{id}): header with actions, and tabs Graph
// (the DAG and a step panel), Timeline and History. Follows the run's
// event stream while it is live and updates in place (coalesced fetches,
// at most about two re-renders a second), keeping the selected step.
//
// URL: ?tab=graph|timeline|history (graph by default), ?step=<id>.

import * as api from '../api.js';
import { h, mount, badge, time, duration, runDuration, json, shortId, link, toast, errorBox, dialog, every } from '../ui.js';
import { renderGraph } from '../graph.js';
import { renderTimeline } from '../timeline.js';

const FINISHED = new Set(['succeeded', 'failed', 'compensated', 'cancelled']);
const RETRYABLE = new Set(['failed', 'compensated', 'cancelled']);
const CANCELLABLE = new Set(['pending', 'running']);
/** Steps the engine runs itself: no worker, no retry policy. */
const ENGINE_RUN = new Set(['approval', 'sleep', 'wait.event', 'promise']);
const TABS = [
  ['graph', 'Graph'],
  ['timeline', 'Timeline'],
  ['history', 'History'],
];
/** Least time between two fetches of the run while it is live. */
const MIN_GAP_MS = 500;
const HISTORY_PAGE = 200;
const ACTOR_KEY = 'fulfil.actor';

const enc = encodeURIComponent;
const problemDetail = (e) => e?.problem?.detail || e?.problem?.title || e?.message || String(e);

/** Who decides where access control is off (sent as Fulfil-Actor). */
function actorHeaders() {
  const actor = !api.token() && sessionStorage.getItem(ACTOR_KEY);
  return actor ? { 'Fulfil-Actor': actor } : {};
}

function lastOf(list, pred) {
  for (let i = list.length - 1; i >= 0; i--) if (pred(list[i])) return list[i];
  return undefined;
}

export default async function render(ctx) {
  const id = ctx.params.id;
  const { signal } = ctx;
  document.title = `Run ${id.slice(0, 8)} · Fulfil`;

  let run;
  try {
    run = await api.get(`/runs/${enc(id)}`, null, { signal });
  } catch (error) {
    if (signal.aborted || error?.name === 'AbortError') return;
    if (error instanceof api.ApiError && error.status === 401) return;
    mount(ctx.main, h('h1', {}, 'Run ', h('code', { text: id })), errorBox(error, `load run ${id}`));
    return;
  }

  // The page's state.
  const state = {
    run,
    defs: new Map(), // step id -> its definition in the Promise
    edges: [],
    defaults: {},
    docError: null,
    tab: TABS.some(([t]) => t === ctx.query.get('tab')) ? ctx.query.get('tab') : 'graph',
    selected: ctx.query.get('step') || null,
    busy: new Set(), // actions in flight
    attemptToggles: new Map(), // the user's open/closed choices in the step panel
    panelKey: null,
    history: { items: [], next: null, loaded: false, loading: false, error: null },
    lastChange: 0,
  };

  // --- Skeleton ---------------------------------------------------------
  const statusBadge = h('span', { class: `badge st-${run.status}`, 'data-testid': 'run-status', text: run.status });
  const live = h('span', { class: 'live', 'data-testid': 'live', hidden: true, title: 'Following the run live' }, h('span', { class: 'dot', 'aria-hidden': 'true' }), 'live');
  const actions = h('div', { class: 'run-actions row' });
  const summary = h('section', { class: 'panel run-summary', 'aria-label': 'Run details' });
  const tabButtons = new Map();
  const tabPanels = new Map();
  const tablist = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Run views' });
  for (const [key, label] of TABS) {
    const b = h('button', {
      type: 'button',
      role: 'tab',
      id: `tab-${key}`,
      'aria-controls': `panel-${key}`,
      'data-tab': key,
      text: label,
      onclick: () => setTab(key),
    });
    tabButtons.set(key, b);
    tablist.append(b);
    tabPanels.set(key, h('div', { role: 'tabpanel', id: `panel-${key}`, 'aria-labelledby': `tab-${key}`, class: `tab-panel tab-${key}` }));
  }
  const docNote = h('div', { class: 'doc-note' });
  const dag = h('div', { class: 'dag-box' });
  tabPanels.get('graph').append(docNote, dag);
  const timeline = h('div', { class: 'timeline-box' });
  tabPanels.get('timeline').append(timeline);
  const historyBox = h('div', { 'data-testid': 'history', class: 'history-box' });
  tabPanels.get('history').append(historyBox);
  const panel = h('aside', { class: 'panel step-panel', 'data-testid': 'step-panel', hidden: true });
  const body = h('div', { class: 'run-body' }, h('div', { class: 'run-views' }, [...tabPanels.values()]), panel);

  mount(
    ctx.main,
    h(
      'div',
      { class: 'run-page' },
      h(
        'div',
        { class: 'run-head' },
        h('h1', {}, 'Run ', h('code', { class: 'run-id', text: id }), ' ', statusBadge, ' ', live),
        h('span', { class: 'spacer' }),
        actions,
      ),
      summary,
      tablist,
      body,
    ),
  );

  // --- The Promise: the DAG's edges --------------------------------------
  try {
    const doc = await api.get(`/promises/${enc(run.promise)}`, { version: run.promise_version }, { signal });
    const spec = doc?.promise?.spec || {};
    const steps = (run.kind === 'delete' ? spec.delete?.steps : spec.workflow?.steps) || [];
    state.defaults = spec.defaults || {};
    for (const s of steps) {
      state.defs.set(s.id, s);
      for (const need of s.needs || []) state.edges.push([need, s.id]);
    }
  } catch (error) {
    if (signal.aborted) return;
    state.docError = error;
  }
  if (state.docError) {
    mount(docNote, errorBox(state.docError, `load Promise ${run.promise} ${run.promise_version}; the graph has no dependencies`));
  }

  // --- Rendering ---------------------------------------------------------
  function stepById(stepId) {
    return (state.run.steps || []).find((s) => s.id === stepId);
  }

  function maxAttempts(stepId) {
    const def = state.defs.get(stepById(stepId)?.instance_of || stepId);
    return def?.retry?.max_attempts ?? state.defaults?.retry?.max_attempts ?? 1;
  }

  function approvals(wf) {
    return (wf.decisions || []).filter((d) => d.decision === 'approve').length;
  }

  function clock(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString();
  }

  /** The graph node's second line. */
  function subOf(step) {
    if (step.instances) return `${step.instances.succeeded}/${step.instances.total} instances`;
    const wf = step.waiting_for;
    const max = maxAttempts(step.id);
    if (wf?.kind === 'approval') return `approval ${approvals(wf)}/${wf.quorum ?? 1}`;
    if (wf?.kind === 'event') return `event ${wf.type || wf.subject || wf.source || ''}`.trim();
    if (wf?.kind === 'sleep') return wf.until ? `until ${clock(wf.until)}` : 'sleep';
    if (wf?.kind === 'retry') return `retry ${wf.attempt}/${max}`;
    if (wf?.kind === 'child') return `child ${wf.promise || ''}`.trim();
    if (step.child) return `child ${step.child.status}`;
    const actions = (step.attempts || []).filter((a) => a.kind !== 'compensation');
    if (step.status === 'failed' || step.status === 'compensated') {
      const err = lastOf(actions, (a) => a.error)?.error;
      const code = err?.code || '';
      if (step.status === 'failed') return `${code}${actions.length > 1 ? ` ×${actions.length}` : ''}`;
    }
    if ((step.status === 'running' || step.status === 'dispatched') && step.attempt > 1) return `attempt ${step.attempt}/${max}`;
    if (step.instance_of) return `item ${JSON.stringify(step.item)}`;
    if (step.status === 'succeeded' || step.status === 'compensated') return step.duration_ms != null ? duration(step.duration_ms) : '';
    return state.defs.get(step.id)?.uses || '';
  }

  /**
   * The Promise's edges, and a for_each step's instances between the step
   * and its dependents: each instance needs its step and is needed by what
   * needs the step, so a wide fan-out is grouped like any other.
   */
  function edges() {
    const instances = new Map();
    for (const s of state.run.steps || []) {
      if (!s.instance_of) continue;
      if (!instances.has(s.instance_of)) instances.set(s.instance_of, []);
      instances.get(s.instance_of).push(s.id);
    }
    if (!instances.size) return state.edges;
    const out = [...state.edges];
    for (const [from, to] of state.edges) {
      for (const instance of instances.get(from) || []) out.push([instance, to]);
    }
    for (const [step, ids] of instances) {
      for (const instance of ids) out.push([step, instance]);
    }
    return out;
  }

  function nodes() {
    return (state.run.steps || []).map((s) => ({
      id: s.id,
      status: s.status,
      sub: subOf(s),
      compensation: lastOf(s.attempts || [], (a) => a.kind === 'compensation')?.status,
    }));
  }

  function renderSummary() {
    const r = state.run;
    statusBadge.className = `badge st-${r.status}`;
    statusBadge.textContent = r.status;
    const rows = [
      ['Promise', link(`/ui/promises/${enc(r.promise)}`, r.promise)],
      ['Version', link(`/ui/promises/${enc(r.promise)}?version=${enc(r.promise_version)}`, r.promise_version)],
      ['Kind', r.kind],
      ['Request', link(`/ui/requests/${enc(r.request_id)}`, shortId(r.request_id))],
      r.parent ? ['Parent', h('span', { class: 'parent-link' }, link(`/ui/runs/${enc(r.parent.run_id)}?step=${enc(r.parent.step)}`, 'run ', shortId(r.parent.run_id)), ` step ${r.parent.step}`)] : null,
      ['Owner', r.owner || h('span', { class: 'muted', text: '—' })],
      ['Created', time(r.created_at)],
      ['Finished', time(r.finished_at)],
      ['Duration', h('span', { class: 'run-duration', text: duration(runDuration(r)) })],
    ];
    const steps = r.steps || [];
    const counts = new Map();
    for (const s of steps) counts.set(s.status, (counts.get(s.status) || 0) + 1);
    rows.push([
      'Steps',
      h(
        'span',
        { class: 'row step-counts' },
        `${steps.length.toLocaleString('en-US')}:`,
        [...counts.entries()].map(([s, n]) => h('span', { class: `badge st-${s}`, text: `${n.toLocaleString('en-US')} ${s}` })),
      ),
    ]);
    const kv = h('dl', { class: 'kv' }, rows.filter(Boolean).map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]));
    mount(
      summary,
      kv,
      r.error ? h('div', { class: 'run-error', role: 'note' }, h('strong', { text: 'Error: ' }), r.error) : null,
      r.outputs !== null && r.outputs !== undefined ? h('div', {}, h('h3', { text: 'Outputs' }), json(r.outputs)) : null,
    );
    renderActions();
  }

  function renderActions() {
    const r = state.run;
    const buttons = [];
    if (CANCELLABLE.has(r.status)) {
      buttons.push(h('button', { type: 'button', class: 'danger', 'data-action': 'cancel', text: 'Cancel', disabled: state.busy.has('cancel'), onclick: cancelDialog }));
    }
    if (RETRYABLE.has(r.status)) {
      buttons.push(h('button', { type: 'button', class: 'primary', 'data-action': 'retry', text: 'Retry', disabled: state.busy.has('retry'), onclick: () => retryDialog(null) }));
    }
    mount(actions, buttons);
  }

  function renderGraphTab() {
    renderGraph(dag, { nodes: nodes(), edges: edges(), selected: state.selected, onSelect: select });
  }

  function renderTimelineTab() {
    renderTimeline(timeline, state.run, { selected: state.selected, onSelect: select });
  }

  function renderTabs() {
    for (const [key, b] of tabButtons) {
      const on = key === state.tab;
      b.setAttribute('aria-selected', String(on));
      b.tabIndex = on ? 0 : -1;
      tabPanels.get(key).hidden = !on;
    }
    renderPanel(); // first: it takes its room before the graph is fitted
    if (state.tab === 'graph') renderGraphTab();
    else if (state.tab === 'timeline') renderTimelineTab();
    else if (state.tab === 'history' && !state.history.loaded && !state.history.loading) loadHistory();
  }

  function setTab(key) {
    if (state.tab === key) return;
    state.tab = key;
    ctx.setQuery({ tab: key === 'graph' ? null : key });
    renderTabs();
  }
  tablist.addEventListener('keydown', (event) => {
    if (event.key !== 'ArrowRight' && event.key !== 'ArrowLeft') return;
    const keys = TABS.map(([k]) => k);
    const i = keys.indexOf(state.tab);
    const next = keys[(i + (event.key === 'ArrowRight' ? 1 : keys.length - 1)) % keys.length];
    setTab(next);
    tabButtons.get(next).focus();
  });

  function select(stepId) {
    if (state.selected === stepId) return;
    state.selected = stepId;
    state.attemptToggles = new Map();
    ctx.setQuery({ step: stepId });
    if (state.tab === 'graph') renderGraphTab();
    if (state.tab === 'timeline') {
      for (const row of timeline.querySelectorAll('.tl-row.selected')) row.classList.remove('selected');
      if (stepId) timeline.querySelector(`.tl-row[data-step="${CSS.escape(stepId)}"]`)?.classList.add('selected');
    }
    renderPanel();
  }

  // --- The step panel ----------------------------------------------------
  function renderPanel() {
    const show = state.selected && state.tab !== 'history';
    panel.hidden = !show;
    body.classList.toggle('has-panel', Boolean(show));
    if (!show) {
      state.panelKey = null;
      return;
    }
    const step = stepById(state.selected);
    const key = JSON.stringify([state.selected, step, state.run.status, [...state.busy]]);
    if (key === state.panelKey) return;
    state.panelKey = key;
    panel.dataset.step = state.selected;
    panel.setAttribute('aria-label', `Step ${state.selected}`);
    const close = h('button', { type: 'button', class: 'ghost', 'aria-label': 'Close the step panel', title: 'Close', text: '✕', onclick: () => select(null) });
    if (!step) {
      mount(panel, h('div', { class: 'step-head' }, h('h2', { text: state.selected }), h('span', { class: 'spacer' }), close), h('p', { class: 'muted', text: `This run has no step ${state.selected}.` }));
      return;
    }
    // An instance of a for_each step is described by its step.
    const def = state.defs.get(step.instance_of || step.id);
    const wf = step.waiting_for;
    const buttons = [];
    if (step.status === 'waiting' && wf?.kind === 'approval') {
      buttons.push(h('button', { type: 'button', class: 'primary', 'data-action': 'approve', text: 'Approve', disabled: state.busy.has('decide'), onclick: () => decideDialog(step, 'approve') }));
      buttons.push(h('button', { type: 'button', class: 'danger', 'data-action': 'reject', text: 'Reject', disabled: state.busy.has('decide'), onclick: () => decideDialog(step, 'reject') }));
    }
    if (RETRYABLE.has(state.run.status)) {
      buttons.push(h('button', { type: 'button', 'data-action': 'retry-step', text: 'Retry from this step', disabled: state.busy.has('retry'), onclick: () => retryDialog(step.id) }));
    }
    const actionAttempts = (step.attempts || []).filter((a) => a.kind !== 'compensation');
    const facts = [
      ['Status', badge(step.status)],
      ['Handler', def?.uses || lastOf(actionAttempts, () => true)?.handler || '—'],
      ['Needs', def?.needs?.length ? h('span', {}, def.needs.map((n, i) => [i ? ', ' : '', h('button', { type: 'button', class: 'linkish', text: n, onclick: () => select(n) })])) : '—'],
      ['Attempt', `${step.attempt}`],
      ENGINE_RUN.has(def?.uses) ? null : ['Max attempts', `${maxAttempts(step.id)} (retry policy)`],
      ['Duration', duration(step.duration_ms)],
    ];
    if (step.instance_of) {
      facts.push(['Instance of', h('button', { type: 'button', class: 'linkish', text: step.instance_of, onclick: () => select(step.instance_of) })]);
      facts.push(['Index', `${step.index}`]);
      facts.push(['Item', h('code', { text: JSON.stringify(step.item) })]);
    }
    if (step.child) {
      const c = step.child;
      facts.push([
        'Child request',
        h(
          'span',
          { class: 'child-link' },
          link(`/ui/requests/${enc(c.request_id)}`, `${c.promise} `, shortId(c.request_id)),
          ' ',
          badge(c.status),
          c.run_id ? [' ', link(`/ui/runs/${enc(c.run_id)}`, 'open its run')] : null,
        ),
      ]);
    }
    if (step.instances) {
      const c = step.instances;
      facts.push(['Instances', `${c.total}: ${c.succeeded} succeeded, ${c.running} running, ${c.pending} pending, ${c.failed} failed, ${c.cancelled} cancelled, ${c.compensated} compensated`]);
    }
    if (def?.if) facts.push(['Condition', h('code', { text: def.if })]);
    if (step.error) facts.push(['Error', h('span', { class: 'err-text', text: step.error })]);

    // Attempts, newest first; the newest is open unless the user chose.
    const attempts = [...(step.attempts || [])].reverse();
    const newest = attempts.length ? `${attempts[0].kind}:${attempts[0].attempt}` : null;
    const attemptEls = attempts.map((a) => {
      const akey = `${a.kind}:${a.attempt}`;
      const details = h(
        'details',
        { class: `attempt${a.kind === 'compensation' ? ' comp' : ''}`, open: state.attemptToggles.get(akey) ?? akey === newest, 'data-attempt': a.attempt, 'data-kind': a.kind },
        h(
          'summary',
          {},
          h('strong', { text: `#${a.attempt}` }),
          ' ',
          a.kind === 'compensation' ? h('span', { class: 'badge st-compensating', text: 'compensation' }) : h('span', { class: 'muted', text: 'action' }),
          ' ',
          badge(a.status),
          ' ',
          h('span', { class: 'muted', text: `${a.handler} · ${duration(a.duration_ms)}` }),
        ),
        h(
          'dl',
          { class: 'kv' },
          [
            ['Handler', a.handler],
            ['Queue', a.queue],
            ['Worker', a.worker || '—'],
            ['Dispatched', time(a.dispatched_at)],
            ['Started', time(a.started_at)],
            ['Finished', time(a.finished_at)],
            ['Deadline', time(a.deadline)],
            ['Task', shortId(a.task_id)],
          ].map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)]),
        ),
        a.error
          ? h('div', { class: 'attempt-error' }, h('strong', { text: `Error${a.error.code ? ` ${a.error.code}` : ''}: ` }), a.error.message || JSON.stringify(a.error), a.error.retryable !== undefined ? h('span', { class: 'muted', text: a.error.retryable ? ' (retryable)' : ' (permanent)' }) : null)
          : null,
        h('h4', { text: 'Input' }),
        json(a.input),
      );
      // Only the user's own toggles are remembered (clicks, Enter, Space).
      details.firstChild.addEventListener('click', () => state.attemptToggles.set(akey, !details.open));
      return details;
    });

    const scroll = panel.scrollTop;
    mount(
      panel,
      h('div', { class: 'step-head' }, h('h2', {}, h('code', { text: step.id })), ' ', badge(step.status), h('span', { class: 'spacer' }), close),
      buttons.length ? h('div', { class: 'row step-actions' }, buttons) : null,
      h('dl', { class: 'kv' }, facts.filter(Boolean).map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)])),
      wf ? h('section', { class: 'waiting-for' }, h('h3', { text: 'Waiting for' }), waitingFor(wf, step)) : null,
      step.outputs !== null && step.outputs !== undefined ? [h('h3', { text: 'Outputs' }), json(step.outputs)] : null,
      h('h3', { text: `Attempts (${attempts.length})` }),
      attempts.length ? attemptEls : h('p', { class: 'muted', text: 'Not dispatched yet.' }),
    );
    panel.scrollTop = scroll;
  }

  function waitingFor(wf, step) {
    const row = (k, v) => [h('dt', { text: k }), h('dd', {}, v)];
    const until = wf.until ? row('Until', time(wf.until)) : null;
    switch (wf.kind) {
      case 'approval': {
        const decisions = wf.decisions || [];
        return h(
          'div',
          {},
          h(
            'dl',
            { class: 'kv' },
            row('Kind', 'approval'),
            wf.message ? row('Message', wf.message) : null,
            row('Approvers', h('span', {}, (wf.approvers || []).map((a, i) => [i ? ', ' : '', h('code', { text: a })]))),
            row('Quorum', `${approvals(wf)} of ${wf.quorum ?? 1} approvals`),
            row('Requester', wf.allow_requester ? 'may approve' : 'may not approve'),
            until,
          ),
          decisions.length
            ? h('ul', { class: 'decisions' }, decisions.map((d) => h('li', {}, h('span', { class: `badge st-${d.decision === 'approve' ? 'succeeded' : 'failed'}`, text: d.decision === 'approve' ? 'approved' : 'rejected' }), ` by ${d.by} `, time(d.at), d.comment ? h('q', { text: d.comment }) : null)))
            : h('p', { class: 'muted', text: 'No decision yet.' }),
        );
      }
      case 'event':
        return h(
          'dl',
          { class: 'kv' },
          row('Kind', 'event'),
          wf.type ? row('Type', h('code', { text: wf.type })) : null,
          wf.subject ? row('Subject', h('code', { text: wf.subject })) : null,
          wf.source ? row('Source', h('code', { text: wf.source })) : null,
          wf.match ? row('Match', h('code', { text: wf.match })) : null,
          wf.lookback ? row('Lookback', wf.lookback) : null,
          until,
        );
      case 'sleep':
        return h('dl', { class: 'kv' }, row('Kind', 'sleep'), row('Wakes at', time(wf.until)));
      case 'child':
        return h(
          'dl',
          { class: 'kv' },
          row('Kind', 'child request'),
          row('Promise', link(`/ui/promises/${enc(wf.promise || '')}`, wf.promise || '—')),
          row('Request', wf.request_id ? link(`/ui/requests/${enc(wf.request_id)}`, shortId(wf.request_id)) : 'being filed'),
          wf.run_id ? row('Run', link(`/ui/runs/${enc(wf.run_id)}`, shortId(wf.run_id), ` (${wf.status})`)) : null,
        );
      case 'retry':
        return h('dl', { class: 'kv' }, row('Kind', 'retry'), row('Next attempt', `${wf.attempt} of ${maxAttempts(step.id)}`), row('At', time(wf.next_attempt_at)));
      case 'worker':
        return h('dl', { class: 'kv' }, row('Kind', 'worker'), row('Queue', h('code', { text: wf.queue || '—' })), row('Worker', wf.worker || h('span', { class: 'muted', text: 'none yet (dispatched)' })), row('Since', time(wf.since)));
      default:
        return json(wf);
    }
  }

  // --- Actions -------------------------------------------------------------
  async function withBusy(key, fn) {
    state.busy.add(key);
    renderActions();
    renderPanel();
    try {
      return await fn();
    } finally {
      state.busy.delete(key);
      if (!signal.aborted) {
        renderActions();
        renderPanel();
      }
    }
  }

  /** A dialog action's failure: shown in the dialog and as a toast. */
  function failed(slot, what, error) {
    mount(slot, errorBox(error, what));
    toast(`Could not ${what}: ${problemDetail(error)}`, 'error');
    return false;
  }

  function cancelDialog() {
    const reason = h('textarea', { id: 'cancel-reason', rows: 3, placeholder: 'Why (kept in the run history)' });
    const compensate = h('input', { type: 'checkbox', id: 'cancel-compensate', checked: true });
    const slot = h('div');
    dialog(
      'Cancel this run?',
      h(
        'div',
        { class: 'form' },
        h('p', {}, 'New steps stop. By default running steps finish and succeeded steps are compensated first.'),
        h('label', { for: 'cancel-reason', text: 'Reason (optional)' }),
        reason,
        h('div', { class: 'row check' }, compensate, h('label', { for: 'cancel-compensate', text: 'Compensate succeeded steps' })),
        slot,
      ),
      [
        { label: 'Close' },
        {
          label: 'Cancel run',
          kind: 'danger',
          onClick: () =>
            withBusy('cancel', async () => {
              try {
                const body = { compensate: compensate.checked };
                if (reason.value.trim()) body.reason = reason.value.trim();
                const out = await api.post(`/runs/${enc(id)}/cancel`, body, null, { headers: actorHeaders() });
                toast(out.status === 'compensating' ? 'Cancelling: compensating succeeded steps first' : 'Run cancelled');
                refresh();
                startLive();
                return true;
              } catch (error) {
                return failed(slot, 'cancel the run', error);
              }
            }),
        },
      ],
    );
  }

  async function retryDialog(step) {
    const key = 'retry';
    if (state.busy.has(key)) return;
    let preview;
    try {
      preview = await withBusy(key, () => api.post(`/runs/${enc(id)}/retry`, { ...(step ? { step } : {}), dry_run: true }, null, { headers: actorHeaders() }));
    } catch (error) {
      toast(`Could not preview the retry: ${problemDetail(error)}`, 'error');
      return;
    }
    const slot = h('div');
    const list = (items, testid) =>
      items.length
        ? h('ul', { class: 'retry-list', 'data-testid': testid }, items.map((s) => h('li', {}, h('code', { text: s }))))
        : h('ul', { class: 'retry-list', 'data-testid': testid }, h('li', { class: 'muted none', text: 'none' }));
    dialog(
      step ? `Retry from step ${step}?` : 'Retry this run?',
      h(
        'div',
        { class: 'retry-preview' },
        h('div', { class: 'cols' },
          h('section', {}, h('h3', { text: `Re-runs (${preview.rerun.length})` }), list(preview.rerun, 'retry-rerun')),
          h('section', {}, h('h3', { text: `Kept (${preview.kept.length})` }), list(preview.kept, 'retry-kept')),
        ),
        h('p', { class: 'muted', text: 'Kept steps keep their outputs; re-run steps and what depends on them start again.' }),
        slot,
      ),
      [
        { label: 'Close' },
        {
          label: 'Retry',
          kind: 'primary',
          onClick: () =>
            withBusy(key, async () => {
              try {
                const out = await api.post(`/runs/${enc(id)}/retry`, { ...(step ? { step } : {}), dry_run: false }, null, { headers: actorHeaders() });
                toast(`Retrying: ${out.rerun.length} step${out.rerun.length === 1 ? '' : 's'} re-run`);
                await refresh(true);
                startLive();
                return true;
              } catch (error) {
                return failed(slot, 'retry the run', error);
              }
            }),
        },
      ],
    );
  }

  function decideDialog(step, decision) {
    const wf = step.waiting_for || {};
    const verb = decision === 'approve' ? 'Approve' : 'Reject';
    const comment = h('textarea', { id: 'approval-comment', rows: 3 });
    const slot = h('div');
    let actor = null;
    if (!api.token()) {
      const remembered = sessionStorage.getItem(ACTOR_KEY);
      const firstUser = (wf.approvers || []).find((a) => a.startsWith('user:'));
      actor = h('input', { id: 'decide-as', type: 'text', value: remembered || firstUser || '', placeholder: 'user:alice', autocomplete: 'off', spellcheck: 'false' });
    }
    dialog(
      `${verb} step ${step.id}`,
      h(
        'div',
        { class: 'form' },
        wf.message ? h('p', {}, h('q', { text: wf.message })) : null,
        h('p', { class: 'muted', text: `${approvals(wf)} of ${wf.quorum ?? 1} approvals so far; approvers ${(wf.approvers || []).join(', ') || '—'}.` }),
        actor
          ? [
              h('label', { for: 'decide-as', text: 'Decide as' }),
              actor,
              h('p', { class: 'muted hint', text: 'Access control is off: you are who you say (sent as Fulfil-Actor).' }),
            ]
          : null,
        h('label', { for: 'approval-comment', text: 'Comment' }),
        comment,
        slot,
      ),
      [
        { label: 'Close' },
        {
          label: verb,
          kind: decision === 'approve' ? 'primary' : 'danger',
          onClick: () =>
            withBusy('decide', async () => {
              const headers = {};
              if (actor) {
                const who = actor.value.trim();
                if (who) {
                  sessionStorage.setItem(ACTOR_KEY, who);
                  headers['Fulfil-Actor'] = who;
                }
              }
              try {
                const body = comment.value.trim() ? { comment: comment.value.trim() } : {};
                const out = await api.post(`/runs/${enc(id)}/steps/${enc(step.id)}/${decision}`, body, null, { headers });
                toast(`${decision === 'approve' ? 'Approved' : 'Rejected'} by ${out.by}: ${out.approvals} of ${out.quorum} approvals; step ${out.step_status}`);
                refresh();
                startLive();
                return true;
              } catch (error) {
                return failed(slot, `${decision} step ${step.id}`, error);
              }
            }),
        },
      ],
    );
    (actor && !actor.value ? actor : comment).focus();
  }

  // --- History -------------------------------------------------------------
  let historyBody = null;
  let historyMore = null;

  function dataCell(data) {
    if (data === null || data === undefined) return h('span', { class: 'muted', text: '—' });
    const text = JSON.stringify(data);
    if (text === '{}') return h('span', { class: 'muted', text: '{}' });
    if (text.length <= 120) return h('code', { class: 'data', text });
    return h('details', {}, h('summary', {}, h('code', { class: 'data', text: `${text.slice(0, 110)}…` })), json(data));
  }

  function historyRow(e) {
    return h(
      'tr',
      { 'data-seq': e.seq },
      h('td', { class: 'num', text: e.seq }),
      h('td', {}, h('code', { text: e.type })),
      h('td', {}, e.step ? h('button', { type: 'button', class: 'linkish', text: e.step, title: `Show step ${e.step}`, onclick: () => { setTab('graph'); select(e.step); } }) : h('span', { class: 'muted', text: '—' })),
      h('td', { class: 'num', text: e.attempt ?? '' }),
      h('td', {}, e.actor),
      h('td', {}, time(e.at)),
      h('td', { class: 'data-cell' }, dataCell(e.data)),
    );
  }

  function renderHistoryShell() {
    historyBody = h('tbody');
    historyMore = h('div', { class: 'history-more' });
    mount(
      historyBox,
      h(
        'table',
        { class: 'grid history' },
        h('thead', {}, h('tr', {}, ['Seq', 'Type', 'Step', 'Attempt', 'Actor', 'At', 'Data'].map((c) => h('th', { scope: 'col', text: c })))),
        historyBody,
      ),
      historyMore,
    );
  }

  function renderHistoryMore() {
    const hs = state.history;
    mount(
      historyMore,
      hs.error ? errorBox(hs.error, 'load the run history') : null,
      hs.next
        ? h('button', { type: 'button', class: 'load-more', text: hs.loading ? 'Loading…' : 'Load more', disabled: hs.loading, onclick: loadHistory })
        : h('p', { class: 'muted', text: `${hs.items.length.toLocaleString('en-US')} events${streaming ? '; new ones appear as they happen' : ''}.` }),
    );
  }

  async function loadHistory() {
    const hs = state.history;
    if (hs.loading) return;
    if (!historyBody) renderHistoryShell();
    hs.loading = true;
    hs.error = null;
    renderHistoryMore();
    try {
      const page = await api.get(`/runs/${enc(id)}/history`, { limit: HISTORY_PAGE, cursor: hs.next }, { signal });
      const last = hs.items.length ? hs.items[hs.items.length - 1].seq : 0;
      const fresh = page.items.filter((e) => e.seq > last);
      hs.items.push(...fresh);
      historyBody.append(...fresh.map(historyRow));
      hs.next = page.next_cursor;
      hs.loaded = true;
    } catch (error) {
      if (signal.aborted) return;
      hs.error = error;
    } finally {
      hs.loading = false;
    }
    if (!signal.aborted) {
      flushLive();
      renderHistoryMore();
    }
  }

  // Live events, in seq order as the stream sends them (from the start), so
  // the history table can be completed after its last page without a gap.
  const liveEvents = [];
  let flushed = 0;

  /** A live event: kept, and appended once the whole history is on the page. */
  function historyLive(e) {
    if (typeof e?.seq !== 'number') return;
    liveEvents.push(e);
    flushLive();
  }

  function flushLive() {
    const hs = state.history;
    if (!hs.loaded || hs.next || hs.loading || !historyBody) return;
    let last = hs.items.length ? hs.items[hs.items.length - 1].seq : 0;
    const rows = [];
    for (; flushed < liveEvents.length; flushed++) {
      const e = liveEvents[flushed];
      if (e.seq <= last) continue;
      hs.items.push(e);
      rows.push(historyRow(e));
      last = e.seq;
    }
    if (rows.length) historyBody.append(...rows);
  }

  // --- Live updates --------------------------------------------------------
  let streaming = null;
  let inflight = null;
  let again = false;
  let lastFetch = 0;
  let restarts = 0;

  function noteChange(r) {
    let t = Date.parse(r.created_at) || 0;
    if (r.finished_at) t = Math.max(t, Date.parse(r.finished_at));
    for (const s of r.steps || []) {
      for (const a of s.attempts || []) {
        for (const iso of [a.dispatched_at, a.started_at, a.finished_at]) if (iso) t = Math.max(t, Date.parse(iso));
      }
    }
    state.lastChange = t;
  }
  noteChange(run);

  function applyRun(r) {
    state.run = r;
    noteChange(r);
    renderSummary();
    if (state.tab === 'graph') renderGraphTab();
    else if (state.tab === 'timeline') renderTimelineTab();
    renderPanel();
  }

  /**
   * Fetches the run again and re-renders: at most one fetch in flight and
   * one more queued behind it, never sooner than MIN_GAP_MS after the last.
   */
  function refresh(now = false) {
    if (inflight) {
      again = true;
      return inflight;
    }
    inflight = (async () => {
      const wait = now ? 0 : Math.max(0, lastFetch + MIN_GAP_MS - Date.now());
      if (wait) await new Promise((r) => setTimeout(r, wait));
      if (signal.aborted) return;
      lastFetch = Date.now();
      try {
        const r = await api.get(`/runs/${enc(id)}`, null, { signal });
        if (!signal.aborted) applyRun(r);
      } catch (error) {
        if (!signal.aborted && error?.name !== 'AbortError') toast(`Could not refresh run ${id.slice(0, 8)}: ${problemDetail(error)}`, 'error');
      }
    })().finally(() => {
      inflight = null;
      if (again && !signal.aborted) {
        again = false;
        refresh();
      } else if (!signal.aborted && !streaming && !FINISHED.has(state.run.status)) {
        // The stream ended but the run goes on (retried, or the watch
        // failed): follow it again, a bounded number of times.
        if (restarts++ < 20) setTimeout(startLive, 2000);
      }
    });
    return inflight;
  }

  function setLive(on) {
    live.hidden = !on;
    if (state.history.loaded) renderHistoryMore();
  }

  function startLive() {
    if (streaming || signal.aborted) return;
    const controller = new AbortController();
    const stop = () => controller.abort();
    signal.addEventListener('abort', stop, { once: true });
    streaming = controller;
    setLive(true);
    api
      .stream(
        `/runs/${enc(id)}/events`,
        (event) => {
          if (event.event === 'error') {
            toast(`The live view of run ${id.slice(0, 8)} stopped: ${event.data?.detail || 'unknown error'}`, 'error');
            return;
          }
          const e = event.data;
          historyLive(e);
          // Replayed history the page already shows changes nothing.
          const at = Date.parse(e?.at);
          if (Number.isFinite(at) && at < state.lastChange - 2000 && e?.type && !/^run\./.test(e.type)) return;
          refresh();
        },
        { signal: controller.signal },
      )
      .catch((error) => {
        if (!signal.aborted && error?.name !== 'AbortError') toast(`Could not follow run ${id.slice(0, 8)} live: ${problemDetail(error)}`, 'error');
      })
      .finally(() => {
        signal.removeEventListener('abort', stop);
        streaming = null;
        if (signal.aborted) return;
        setLive(false);
        refresh(true);
      });
  }

  // --- Go ----------------------------------------------------------------
  renderSummary();
  renderTabs();
  if (!FINISHED.has(run.status)) startLive();
  const stopTicking = every(1000, () => {
    if (FINISHED.has(state.run.status)) return;
    const d = summary.querySelector('.run-duration');
    if (d) d.textContent = duration(runDuration(state.run));
  });
  signal.addEventListener('abort', stopTicking, { once: true });
}
