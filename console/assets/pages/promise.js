// /ui/promises/{name}[?version=&tab=workflow|schema|request]: one Promise
// version: its workflow as a DAG and a list of steps, its request schema,
// and a form that files a request.

import * as api from '../api.js';
import { h, mount, badge, time, json, link, toast, errorBox } from '../ui.js';
import { schemaForm, serverErrors } from '../form.js';
import { problemText, aborted } from '../filters.js';

const TABS = [
  ['workflow', 'Workflow'],
  ['schema', 'Schema'],
  ['request', 'Request'],
];

let graphModule = null;
/** graph.js, loaded once; null when it cannot be (the steps are then listed only). */
function loadGraph() {
  graphModule ??= import('../graph.js').catch((error) => {
    console.warn('graph.js could not be loaded; steps are listed without the graph', error);
    return { error };
  });
  return graphModule;
}

export default async function render(ctx) {
  const name = ctx.params.name;
  const version = ctx.query.get('version') || '';
  let tab = TABS.some(([t]) => t === ctx.query.get('tab')) ? ctx.query.get('tab') : 'workflow';

  let p;
  try {
    p = await api.get(`/promises/${encodeURIComponent(name)}`, { version }, { signal: ctx.signal });
  } catch (error) {
    if (aborted(error, ctx.signal)) return;
    mount(
      ctx.main,
      h('p', { class: 'crumbs' }, link('/ui/promises', 'Promises'), ' / '),
      h('h1', { text: name }),
      errorBox(error, `load Promise ${name}${version ? ` version ${version}` : ''}`),
    );
    return;
  }
  // Another version than the head: which one is the head (new requests use it).
  let currentVersion = p.current ? p.version : null;
  if (!p.current) {
    try {
      currentVersion = (await api.get(`/promises/${encodeURIComponent(name)}`, {}, { signal: ctx.signal })).version;
    } catch (error) {
      if (aborted(error, ctx.signal)) return;
    }
  }
  const currentOf = () => currentVersion || 'unknown';
  const doc = p.promise || {};
  const spec = doc.spec || {};
  const metadata = doc.metadata || {};

  const versionControl =
    p.versions.length > 1
      ? h(
          'select',
          {
            id: 'promise-version',
            onchange: (e) => {
              const q = new URLSearchParams({ version: e.target.value, tab });
              ctx.navigate(`/ui/promises/${encodeURIComponent(name)}?${q}`);
            },
          },
          [...p.versions].reverse().map((v) =>
            h('option', { value: v, selected: v === p.version, text: v }),
          ),
        )
      : h('span', { id: 'promise-version', text: p.version });

  const panels = new Map();
  const panelBox = h('div', { class: 'tab-panel', role: 'tabpanel', id: 'promise-tab-panel', tabindex: '-1' });
  const tabLinks = TABS.map(([key, label]) =>
    h('a', {
      href: tabHref(key),
      id: `tab-${key}`,
      role: 'tab',
      'aria-controls': 'promise-tab-panel',
      dataset: { tab: key },
      text: label,
      onclick: (event) => {
        if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
        event.preventDefault();
        show(key);
      },
    }),
  );

  function tabHref(key) {
    const q = new URLSearchParams();
    if (version) q.set('version', version);
    q.set('tab', key);
    return `/ui/promises/${encodeURIComponent(name)}?${q}`;
  }

  function show(key, { initial = false } = {}) {
    tab = key;
    if (!initial) ctx.setQuery({ tab: key });
    for (const a of tabLinks) {
      const on = a.dataset.tab === key;
      a.setAttribute('aria-selected', String(on));
      a.tabIndex = on ? 0 : -1;
    }
    panelBox.setAttribute('aria-labelledby', `tab-${key}`);
    if (!panels.has(key)) {
      const builders = { workflow: workflowTab, schema: schemaTab, request: requestTab };
      panels.set(key, builders[key]());
    }
    mount(panelBox, panels.get(key));
  }

  // Arrow keys move between tabs (the tablist pattern).
  const tabList = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Promise views' }, tabLinks);
  tabList.addEventListener('keydown', (event) => {
    const i = TABS.findIndex(([k]) => k === tab);
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    event.preventDefault();
    const next = TABS[(i + step + TABS.length) % TABS.length][0];
    show(next);
    tabLinks.find((a) => a.dataset.tab === next).focus();
  });

  const labels = Object.entries(metadata.labels || {});
  mount(
    ctx.main,
    h('p', { class: 'crumbs' }, link('/ui/promises', 'Promises'), ' / '),
    h(
      'div',
      { class: 'page-head' },
      h('h1', { id: 'promise-name', text: p.name }),
      p.current ? badge('current', 'st-active') : h('span', { class: 'badge st-pending', text: 'not current' }),
    ),
    p.description ? h('p', { class: 'lead', text: p.description }) : null,
    h(
      'dl',
      { class: 'kv panel promise-meta' },
      h('dt', {}, p.versions.length > 1 ? h('label', { for: 'promise-version', text: 'Version' }) : 'Version'),
      h('dd', {}, versionControl, p.current ? null : h('span', { class: 'muted' }, ' (the current version is ', h('a', { href: `/ui/promises/${encodeURIComponent(name)}` }, currentOf()), ')')),
      h('dt', { text: 'Owner' }),
      h('dd', {}, p.owner ? link(`/ui/runs?owner=${encodeURIComponent(p.owner)}`, p.owner) : h('span', { class: 'muted', text: '—' })),
      h('dt', { text: 'Versions' }),
      h('dd', { text: p.versions.join(', ') }),
      h('dt', { text: 'Steps' }),
      h('dd', { text: String(p.steps) }),
      h('dt', { text: 'Applied' }),
      h('dd', {}, time(p.created_at)),
      labels.length ? [h('dt', { text: 'Labels' }), h('dd', {}, labels.map(([k, v]) => h('code', { class: 'label', text: `${k}=${v}` })))] : null,
      h('dt', { text: 'Runs' }),
      h('dd', {}, link(`/ui/runs?promise=${encodeURIComponent(p.name)}`, 'Runs of this Promise')),
    ),
    tabList,
    panelBox,
  );
  show(tab, { initial: true });

  // ---- Workflow --------------------------------------------------------

  function workflowTab() {
    const box = h('div', { class: 'workflow-tab' });
    const steps = spec.workflow?.steps || [];
    box.append(h('h2', { text: 'Workflow' }), workflowView(steps, 'workflow'));
    if (spec.delete?.steps?.length) {
      box.append(
        h('h2', { text: 'Delete workflow' }),
        h('p', { class: 'muted', text: 'Run as a run of kind delete when a request is deleted.' }),
        workflowView(spec.delete.steps, 'delete'),
      );
    }
    box.append(...settings());
    return box;
  }

  function workflowView(steps, which) {
    const graphBox = h('div', { class: 'graph-box', id: `graph-${which}` }, h('p', { class: 'muted', text: 'Drawing the graph…' }));
    const nodes = steps.map((s) => ({ id: s.id, label: s.id, sub: s.uses }));
    const edges = steps.flatMap((s) => (s.needs || []).map((n) => [n, s.id]));
    let draw = null; // set once graph.js is loaded
    const select = (id) => {
      for (const tr of list.querySelectorAll('tr.selected')) tr.classList.remove('selected');
      const row = list.querySelector(`tr[data-step="${CSS.escape(id)}"]`);
      if (row) {
        row.classList.add('selected');
        row.scrollIntoView({ block: 'nearest' });
      }
      draw?.(id);
    };
    const list = stepsTable(steps, which, select);
    loadGraph().then((mod) => {
      if (ctx.signal.aborted) return;
      if (typeof mod?.renderGraph !== 'function') {
        mount(graphBox, h('p', { class: 'muted graph-missing', text: 'The graph view is not available; the steps are listed below in order.' }), stepOutline(steps));
        return;
      }
      draw = (selected) => mod.renderGraph(graphBox, { nodes, edges, onSelect: select, selected });
      try {
        mount(graphBox);
        draw(null);
      } catch (error) {
        console.error(error);
        draw = null;
        mount(graphBox, errorBox(error, 'draw the graph'), stepOutline(steps));
      }
    });
    return h('div', { class: 'workflow-view' }, graphBox, list);
  }

  /** The DAG in words, when it cannot be drawn. */
  function stepOutline(steps) {
    return h(
      'ol',
      { class: 'step-outline' },
      steps.map((s) =>
        h('li', {}, h('code', { text: s.id }), ` (${s.uses})`, s.needs?.length ? h('span', { class: 'muted', text: ` after ${s.needs.join(', ')}` }) : null),
      ),
    );
  }

  function stepsTable(steps, which, select) {
    const defaults = spec.defaults || {};
    const dash = () => h('span', { class: 'muted', text: '—' });
    const rows = steps.map((s) =>
      h(
        'tr',
        { dataset: { step: s.id } },
        h(
          'td',
          {},
          h('button', { type: 'button', class: 'linkish step-select', title: 'Show in the graph', onclick: () => select(s.id) }, h('code', { text: s.id })),
        ),
        h(
          'td',
          {},
          h('code', { text: s.uses }),
          // A for_each step runs once per item of its list.
          s.for_each != null
            ? h('span', { class: 'muted', text: ` for each of ${typeof s.for_each === 'string' ? s.for_each : JSON.stringify(s.for_each)}${s.max_parallel ? `, ${s.max_parallel} at a time` : ''}` })
            : null,
        ),
        h('td', {}, s.needs?.length ? s.needs.map((n, i) => [i ? ', ' : '', h('code', { text: n })]) : dash()),
        h('td', {}, s.if ? h('code', { text: s.if }) : dash()),
        h('td', {}, retryText(s.retry, defaults.retry)),
        h('td', {}, s.timeout || (defaults.timeout ? h('span', { class: 'muted', text: `${defaults.timeout} (default)` }) : h('span', { class: 'muted', text: '5m (default)' }))),
        h('td', {}, s.queue || defaults.queue || h('span', { class: 'muted', text: 'default' })),
        h('td', {}, s.compensate ? h('code', { text: s.compensate.uses }) : dash()),
        h(
          'td',
          {},
          s.with && Object.keys(s.with).length
            ? h('details', { class: 'inline-details' }, h('summary', { text: 'Input' }), json(s.with), s.compensate?.with ? [h('p', { class: 'small muted', text: 'Compensation input' }), json(s.compensate.with)] : null)
            : dash(),
        ),
      ),
    );
    return h(
      'table',
      { class: 'grid steps', id: `steps-${which}` },
      h('caption', { class: 'sr-only', text: `Steps of the ${which} workflow` }),
      h(
        'thead',
        {},
        h('tr', {}, ['Step', 'Uses', 'Needs', 'If', 'Retries', 'Timeout', 'Queue', 'Compensate', 'With'].map((t) => h('th', { scope: 'col', text: t }))),
      ),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 9, class: 'muted', text: 'No steps.' }))),
    );
  }

  function settings() {
    const parts = [];
    const items = [];
    if (spec.timeout) items.push(['Run timeout', spec.timeout]);
    if (spec.defaults && Object.keys(spec.defaults).length) items.push(['Step defaults', json(spec.defaults)]);
    if (spec.reconcile) items.push(['Reconcile', `every ${spec.reconcile.every}, at most ${spec.reconcile.max_concurrent ?? 10} at once`]);
    if (spec.access?.teams) items.push(['Who may file', spec.access.teams.join(', ')]);
    if (spec.outputs && Object.keys(spec.outputs).length) items.push(['Outputs', json(spec.outputs)]);
    if (items.length) {
      parts.push(h('h2', { text: 'Settings' }), h('dl', { class: 'kv panel promise-settings' }, items.map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)])));
    }
    if (spec.triggers?.length) {
      parts.push(
        h('h2', { text: 'Triggers' }),
        h(
          'table',
          { class: 'grid triggers' },
          h('thead', {}, h('tr', {}, ['Trigger', 'Subject', 'Type', 'Filter', 'Params'].map((t) => h('th', { scope: 'col', text: t })))),
          h(
            'tbody',
            {},
            spec.triggers.map((t) =>
              h(
                'tr',
                { dataset: { trigger: t.name } },
                h('td', {}, h('code', { text: t.name })),
                h('td', {}, t.subject ? h('code', { text: t.subject }) : '—'),
                h('td', {}, t.type ? h('code', { text: t.type }) : '—'),
                h('td', {}, t.filter ? h('code', { text: t.filter }) : '—'),
                h('td', {}, h('details', { class: 'inline-details' }, h('summary', { text: 'Params' }), json(t.params ?? {}))),
              ),
            ),
          ),
        ),
        h('p', {}, link(`/ui/events`, 'Event ledger')),
      );
    }
    return parts;
  }

  // ---- Schema ----------------------------------------------------------

  function schemaTab() {
    return h(
      'div',
      { class: 'schema-tab' },
      h('h2', { text: 'Request schema' }),
      h('p', { class: 'muted' }, 'The JSON Schema of a request\u2019s ', h('code', { text: 'params' }), ' (', h('code', { text: 'spec.api' }), ').'),
      h('pre', { class: 'json schema-json', id: 'promise-schema', text: JSON.stringify(spec.api ?? {}, null, 2) }),
    );
  }

  // ---- Request ---------------------------------------------------------

  function requestTab() {
    const form = schemaForm(spec.api ?? { type: 'object' }, { values: {} });
    const summary = h('div', { class: 'summary-slot' });
    const keyInput = h('input', { id: 'request-idempotency-key', type: 'text', autocomplete: 'off', maxlength: 255 });
    const submit = h('button', { type: 'submit', class: 'primary', id: 'file-request', text: 'File request' });
    const el = h(
      'form',
      { class: 'request-form panel', id: 'request-form', novalidate: true, 'aria-label': `File a ${p.name} request` },
      p.current
        ? null
        : h(
            'p',
            { class: 'notice' },
            `This is version ${p.version}; a new request uses the current version (${currentOf()}), whose schema may differ. `,
            h('a', { href: `/ui/promises/${encodeURIComponent(name)}?tab=request` }, 'Use the current version\u2019s form'),
          ),
      summary,
      form.element,
      h(
        'details',
        { class: 'advanced' },
        h('summary', { text: 'Options' }),
        h(
          'div',
          { class: 'form-field' },
          h('label', { for: keyInput.id, text: 'Idempotency key' }),
          keyInput,
          h('p', { class: 'help', text: 'Filing again with the same key and parameters returns the first request instead of a new one.' }),
        ),
      ),
      h('div', { class: 'actions' }, submit),
    );

    function showSummary(title, detail, errors, extra) {
      const box = h(
        'div',
        { class: 'error-summary', role: 'alert', tabindex: '-1', id: 'request-errors' },
        h('h2', { text: title }),
        detail ? h('p', { text: detail }) : null,
        errors?.length
          ? h(
              'ul',
              {},
              errors.map((e) =>
                h(
                  'li',
                  { dataset: { field: e.path ?? '' } },
                  e.path
                    ? h('a', {
                        href: `#field-${e.path}`,
                        text: `${e.path}: ${e.message}`,
                        onclick: (event) => {
                          event.preventDefault();
                          event.stopPropagation();
                          form.focus(e.path);
                        },
                      })
                    : e.message,
                ),
              ),
            )
          : null,
        extra,
      );
      mount(summary, box);
      box.focus();
    }

    el.addEventListener('submit', async (event) => {
      event.preventDefault();
      mount(summary);
      const errors = form.validate();
      if (errors.length) {
        showSummary('Check the form', `${errors.length === 1 ? 'One field needs' : `${errors.length} fields need`} attention before filing.`, errors);
        return;
      }
      const body = { params: form.value() };
      const key = keyInput.value.trim();
      if (key) body.idempotency_key = key;
      submit.disabled = true;
      submit.textContent = 'Filing…';
      try {
        const accepted = await api.post(`/promises/${encodeURIComponent(name)}/requests`, body);
        toast(accepted.replayed ? `An earlier request with this key was returned (run ${String(accepted.run_id).slice(0, 8)})` : `Request filed: run ${String(accepted.run_id).slice(0, 8)}`);
        ctx.navigate(`/ui/runs/${accepted.run_id}`);
      } catch (error) {
        if (!(error instanceof api.ApiError)) {
          showSummary('The request was not filed', problemText(error));
        } else if (error.status === 422 && Array.isArray(error.problem.errors)) {
          const errs = serverErrors(error.problem);
          form.showErrors(errs);
          showSummary('The request was not filed', error.problem.detail, errs);
        } else if (error.status === 403 && error.code === 'policy-denied') {
          const violations = error.problem.violations || [];
          form.showErrors([]);
          showSummary(
            'Denied by policy',
            'Admission policies refused this request; nothing was stored. Every broken rule:',
            null,
            h(
              'ul',
              { class: 'violations' },
              violations.map((v) =>
                h(
                  'li',
                  { dataset: { policy: v.policy, rule: v.rule } },
                  h('strong', { text: v.message }),
                  h('span', { class: 'muted', text: ` (policy ${v.policy}, rule ${v.rule})` }),
                  v.error ? h('span', { class: 'muted', text: ` — ${v.error}` }) : null,
                ),
              ),
            ),
          );
        } else if (error.status === 401) {
          // The token prompt is up.
        } else {
          form.showErrors([]);
          showSummary('The request was not filed', problemText(error), null, error.code ? h('p', { class: 'muted small' }, 'Problem ', h('code', { text: error.code }), ` (HTTP ${error.status})`) : null);
        }
      } finally {
        submit.disabled = false;
        submit.textContent = 'File request';
      }
    });
    return h('div', { class: 'request-tab' }, h('h2', { text: `File a request` }), el);
  }
}


function retryText(retry, defaults) {
  const r = retry || defaults;
  if (!r) return h('span', { class: 'muted', text: 'engine default' });
  const text = r.max_attempts <= 1 ? 'no retry' : `${r.max_attempts} attempts, ${r.initial}…${r.max} ×${r.multiplier}`;
  return retry ? text : h('span', { class: 'muted', text: `${text} (default)` });
}
