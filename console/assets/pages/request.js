// The request page (/ui/requests/{id}): the request, its runs, and
// "Delete request". Refreshes every few seconds while something runs.

import * as api from '../api.js';
import { h, mount, badge, time, duration, runDuration, json, shortId, link, toast, errorBox, dialog, table, every } from '../ui.js';

const enc = encodeURIComponent;
const SETTLED = new Set(['succeeded', 'failed', 'deleted', 'delete_failed']);
const problemDetail = (e) => e?.problem?.detail || e?.problem?.title || e?.message || String(e);

export default async function render(ctx) {
  const id = ctx.params.id;
  const { signal } = ctx;
  document.title = `Request ${id.slice(0, 8)} · Fulfil`;

  const head = h('div', { class: 'run-head' });
  const details = h('section', { class: 'panel', 'aria-label': 'Request details' });
  const runsBox = h('section', { 'data-testid': 'request-runs', 'aria-label': 'Runs of this request' });
  mount(ctx.main, h('div', { class: 'request-page' }, head, details, h('h2', { text: 'Runs' }), runsBox));

  let request = null;
  let deleting = false;

  async function load() {
    const [req, runs] = await Promise.allSettled([
      api.get(`/requests/${enc(id)}`, null, { signal }),
      api.get('/runs', { request: id, limit: 100 }, { signal }),
    ]);
    if (signal.aborted) return;
    if (req.status === 'rejected') {
      if (req.reason instanceof api.ApiError && req.reason.status === 401) return;
      mount(head, h('h1', {}, 'Request ', h('code', { text: id })));
      mount(details, errorBox(req.reason, `load request ${id}`));
      runsBox.replaceChildren();
      return;
    }
    request = req.value;
    renderRequest();
    if (runs.status === 'rejected') mount(runsBox, errorBox(runs.reason, `list the runs of request ${id}`));
    else renderRuns(runs.value);
  }

  function renderRequest() {
    const r = request;
    const gone = r.status === 'deleted' || r.status === 'deleting';
    mount(
      head,
      h('h1', {}, 'Request ', h('code', { text: id }), ' ', h('span', { class: `badge st-${r.status}`, 'data-testid': 'request-status', text: r.status })),
      h('span', { class: 'spacer' }),
      h('div', { class: 'row' }, h('button', { type: 'button', class: 'danger', 'data-action': 'delete', text: 'Delete request', disabled: gone || deleting, title: gone ? `The request is ${r.status}` : null, onclick: deleteDialog })),
    );
    const runLink = (runId) => (runId ? link(`/ui/runs/${enc(runId)}`, shortId(runId)) : h('span', { class: 'muted', text: '—' }));
    const rows = [
      ['Promise', link(`/ui/promises/${enc(r.promise)}`, r.promise)],
      ['Version', link(`/ui/promises/${enc(r.promise)}?version=${enc(r.promise_version)}`, r.promise_version)],
      ['Status', badge(r.status)],
      ['Created by', r.created_by || h('span', { class: 'muted', text: '—' })],
      ['Team', r.team || h('span', { class: 'muted', text: '—' })],
      ['Created', time(r.created_at)],
      ['Updated', time(r.updated_at)],
      ['Configure run', runLink(r.run_id)],
    ];
    if (r.reconcile_run_id) rows.push(['Latest reconcile run', runLink(r.reconcile_run_id)]);
    if (r.delete_run_id) rows.push(['Delete run', runLink(r.delete_run_id)]);
    if (r.idempotency_key) rows.push(['Idempotency key', h('code', { text: r.idempotency_key })]);
    if (r.parent) {
      rows.push([
        'Parent',
        h('span', { class: 'parent-link' }, link(`/ui/requests/${enc(r.parent.request_id)}`, 'request ', shortId(r.parent.request_id)), ', ', link(`/ui/runs/${enc(r.parent.run_id)}?step=${enc(r.parent.step)}`, `step ${r.parent.step}`)),
      ]);
    }
    const children = r.children || [];
    if (children.length) {
      rows.push([
        'Children',
        h(
          'ul',
          { class: 'children' },
          children.map((c) => h('li', {}, link(`/ui/requests/${enc(c.request_id)}`, `${c.promise} `, shortId(c.request_id)), ' ', badge(c.status), ` from step ${c.step}`)),
        ),
      ]);
    }
    mount(
      details,
      h('dl', { class: 'kv' }, rows.map(([k, v]) => [h('dt', { text: k }), h('dd', {}, v)])),
      h('div', { class: 'request-json' },
        h('div', {}, h('h3', { text: 'Parameters' }), json(r.params)),
        h('div', {}, h('h3', { text: 'Outputs' }), r.outputs === null || r.outputs === undefined ? h('p', { class: 'muted', text: SETTLED.has(r.status) ? 'None.' : 'None yet.' }) : json(r.outputs)),
      ),
    );
  }

  function renderRuns(page) {
    const columns = [
      { key: 'id', label: 'Run', render: (r) => link(`/ui/runs/${enc(r.id)}`, shortId(r.id)) },
      { key: 'kind', label: 'Kind', render: (r) => r.kind },
      { key: 'status', label: 'Status', render: (r) => badge(r.status) },
      { key: 'created', label: 'Created', render: (r) => time(r.created_at) },
      { key: 'finished', label: 'Finished', render: (r) => time(r.finished_at) },
      { key: 'duration', label: 'Duration', render: (r) => duration(runDuration(r)) },
      { key: 'error', label: 'Error', render: (r) => (r.error ? h('span', { class: 'err-text', title: r.error, text: r.error.length > 140 ? `${r.error.slice(0, 139)}…` : r.error }) : '') },
    ];
    mount(
      runsBox,
      table(columns, page.items, { empty: 'No runs.', rowAttrs: (r) => ({ 'data-run': r.id }) }),
      page.next_cursor ? h('p', { class: 'muted', text: 'Showing the latest 100 runs.' }) : null,
    );
  }

  function deleteDialog() {
    const force = h('input', { type: 'checkbox', id: 'delete-force' });
    const slot = h('div');
    dialog(
      'Delete this request?',
      h(
        'div',
        { class: 'form' },
        h('p', {}, 'This runs the Promise\'s teardown (', h('code', { text: 'delete' }), ' workflow) as a delete run; without one the request is marked deleted at once.'),
        h('div', { class: 'row check' }, force, h('label', { for: 'delete-force', text: 'Force: mark it deleted without a teardown (operators only)' })),
        slot,
      ),
      [
        { label: 'Close' },
        {
          label: 'Delete request',
          kind: 'danger',
          onClick: async () => {
            deleting = true;
            renderRequest();
            try {
              const out = await api.del(`/requests/${enc(id)}`, force.checked ? { force: 'true' } : null);
              toast(out.run_id ? `Deleting: delete run ${out.run_id.slice(0, 8)} started` : `Request ${out.status}`);
              if (out.run_id) ctx.navigate(`/ui/runs/${enc(out.run_id)}`);
              else await load();
              return true;
            } catch (error) {
              mount(slot, errorBox(error, 'delete the request'));
              toast(`Could not delete the request: ${problemDetail(error)}`, 'error');
              return false;
            } finally {
              deleting = false;
              if (!signal.aborted && request) renderRequest();
            }
          },
        },
      ],
    );
  }

  await load();
  const stop = every(3000, () => {
    if (request && !SETTLED.has(request.status)) load().catch(() => {});
  });
  signal.addEventListener('abort', stop, { once: true });
}
