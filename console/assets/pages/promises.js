// /ui/promises[?q=]: the catalog, the head version of every Promise.

import { h, mount, link, errorBox, table } from '../ui.js';
import { field, text, all, aborted } from '../filters.js';

export default async function render(ctx) {
  let search = ctx.query.get('q') || '';
  let promises = null;
  const box = h('div', { class: 'promises-table' }, h('p', { class: 'muted', text: 'Loading…' }));
  const count = h('span', { class: 'muted' });
  const input = text('filter-search', search, {
    placeholder: 'name, owner or words',
    onchange: () => {},
  });
  // Filtering is local, so it follows every keystroke.
  input.addEventListener('input', () => {
    search = input.value.trim();
    ctx.setQuery({ q: search });
    draw();
  });

  mount(
    ctx.main,
    h('div', { class: 'page-head' }, h('h1', { text: 'Promises' }), h('span', { class: 'spacer' }), count),
    h(
      'form',
      { class: 'toolbar', role: 'search', 'aria-label': 'Filter Promises', onsubmit: (e) => e.preventDefault() },
      field('Search', input),
    ),
    box,
  );

  const columns = [
    { key: 'name', label: 'Name', render: (p) => link(`/ui/promises/${encodeURIComponent(p.name)}`, p.name) },
    { key: 'owner', label: 'Owner', render: (p) => p.owner || h('span', { class: 'muted', text: '—' }) },
    { key: 'version', label: 'Current version', render: (p) => h('code', { text: p.version }) },
    {
      key: 'versions',
      label: 'Versions',
      render: (p) => h('span', { title: p.versions.join(', '), text: String(p.versions.length) }),
    },
    { key: 'steps', label: 'Steps', render: (p) => String(p.steps) },
    { key: 'description', label: 'Description', render: (p) => p.description || h('span', { class: 'muted', text: '—' }) },
    {
      key: 'file',
      label: 'Request',
      render: (p) => link(`/ui/promises/${encodeURIComponent(p.name)}?tab=request`, h('span', { text: 'File…' }, h('span', { class: 'sr-only', text: ` a ${p.name} request` }))),
    },
  ];

  function draw() {
    if (!promises) return;
    const words = search.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = promises.filter((p) => {
      const hay = `${p.name} ${p.owner || ''} ${p.description || ''}`.toLowerCase();
      return words.every((w) => hay.includes(w));
    });
    count.textContent = words.length ? `${shown.length} of ${promises.length}` : `${promises.length} Promise${promises.length === 1 ? '' : 's'}`;
    mount(
      box,
      table(columns, shown, {
        empty: promises.length ? 'No Promise matches.' : 'No Promises yet: apply one with fulfil apply -f FILE.',
        rowAttrs: (p) => ({ dataset: { promise: p.name } }),
      }),
    );
  }

  try {
    promises = await all('/promises', {}, { signal: ctx.signal, max: 5000 });
  } catch (error) {
    if (aborted(error, ctx.signal)) return;
    mount(box, errorBox(error, 'list the Promises'));
    return;
  }
  draw();
}
