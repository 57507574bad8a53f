// A workflow's DAG as SVG: layered left to right, nodes coloured by status.
//
//   renderGraph(container, {nodes, edges, onSelect, selected})
//     nodes: [{id, label?, status?, sub?, compensation?}]  (status optional:
//            the Promise page draws a workflow without a run)
//     edges: [[from, to], ...]
//
// Call it again with new data to update: when the shape (nodes, edges,
// expanded groups) is unchanged, only statuses and texts change in place,
// so focus, scroll and an expanded group's list survive live updates.
//
// Wide fan-outs (more than GROUP_MIN nodes of one layer sharing the same
// predecessors and successors) are drawn as one group node "N steps" with
// per-status counts; a click expands it into a scrollable list (HTML in a
// foreignObject), never thousands of SVG nodes. The container gets
// `data-testid="dag"` and `data-render-ms` (the last render's time).

const NODE_W = 196;
const NODE_H = 50;
const GROUP_W = 220;
const GROUP_H = 66;
const OPEN_W = 280;
const LIST_H = 280;
const ROW_H = 22;
const DUMMY_H = 4;
const GAP_X = 64;
const GAP_Y = 16;
const MARGIN = 16;
export const GROUP_MIN = 25;

/** Statuses in the order a summary names them (worst and busiest first). */
const STATUS_ORDER = [
  'failed', 'timed_out', 'running', 'dispatched', 'retrying', 'waiting', 'ready', 'pending',
  'compensating', 'compensated', 'succeeded', 'skipped', 'cancelled',
];

let graphs = 0;

const esc = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

/** Status names become class names: keep them to safe characters. */
const cls = (s) => String(s).replace(/[^a-z0-9_-]/gi, '_');

const fmt = (n) => n.toLocaleString('en-US');

function clip(text, max) {
  const s = String(text);
  return s.length > max ? `${s.slice(0, max - 1)}…` : s;
}

/** Members' statuses counted, in STATUS_ORDER (unknown ones last). */
function countStatuses(members) {
  const counts = new Map();
  for (const n of members) {
    const s = n.status || 'none';
    counts.set(s, (counts.get(s) || 0) + 1);
  }
  return [...counts.entries()].sort((a, b) => rank(a[0]) - rank(b[0]));
}

function rank(status) {
  const i = STATUS_ORDER.indexOf(status);
  return i < 0 ? STATUS_ORDER.length : i;
}

function summaryText(counts, total) {
  if (counts.length === 1 && counts[0][0] === 'none') return `${fmt(total)} parallel steps`;
  return counts.map(([s, n]) => (s === 'none' ? `${fmt(n)} steps` : `${fmt(n)} ${s}`)).join(' · ');
}

/**
 * Lays the graph out. Returns {units, links, width, height}: units are
 * {kind: 'node'|'group', id, x, y, w, h, layer, node | members}; links
 * are {from, to} unit ids with end points.
 */
export function layout({ nodes, edges }, { expanded = new Set(), groupMin = GROUP_MIN } = {}) {
  const index = new Map();
  nodes.forEach((n, i) => index.set(n.id, i));
  const preds = nodes.map(() => []);
  const succs = nodes.map(() => []);
  const seen = new Set();
  for (const [from, to] of edges || []) {
    const a = index.get(from);
    const b = index.get(to);
    if (a === undefined || b === undefined || a === b) continue;
    const key = `${a}:${b}`;
    if (seen.has(key)) continue;
    seen.add(key);
    succs[a].push(b);
    preds[b].push(a);
  }

  // Longest-path layering from the roots (Kahn's order).
  const layer = new Array(nodes.length).fill(0);
  const indeg = preds.map((p) => p.length);
  const queue = [];
  indeg.forEach((d, i) => d === 0 && queue.push(i));
  let done = 0;
  for (let q = 0; q < queue.length; q++) {
    const v = queue[q];
    done++;
    for (const w of succs[v]) {
      if (layer[v] + 1 > layer[w]) layer[w] = layer[v] + 1;
      if (--indeg[w] === 0) queue.push(w);
    }
  }
  if (done < nodes.length) {
    // A cycle (should not happen): put what is left after everything else.
    const last = Math.max(0, ...layer) + 1;
    indeg.forEach((d, i) => {
      if (d > 0) layer[i] = last;
    });
  }

  // Group wide fan-outs: same layer, same predecessors, same successors.
  const unitOf = new Array(nodes.length);
  const units = [];
  const byKey = new Map();
  for (let i = 0; i < nodes.length; i++) {
    const key = `${layer[i]}|${[...preds[i]].sort((x, y) => x - y).join(',')}|${[...succs[i]].sort((x, y) => x - y).join(',')}`;
    let list = byKey.get(key);
    if (!list) byKey.set(key, (list = []));
    list.push(i);
  }
  const grouped = new Set();
  for (const list of byKey.values()) {
    if (list.length <= groupMin) continue;
    const members = list.map((i) => nodes[i]);
    const id = `${members[0].id}..${members[members.length - 1].id}`;
    const open = expanded.has(id);
    const unit = {
      kind: 'group', id, members, layer: layer[list[0]], open,
      w: open ? OPEN_W : GROUP_W, h: open ? GROUP_H + LIST_H : GROUP_H, first: list[0],
    };
    for (const i of list) {
      unitOf[i] = unit;
      grouped.add(i);
    }
    units.push(unit);
  }
  for (let i = 0; i < nodes.length; i++) {
    if (grouped.has(i)) continue;
    const unit = { kind: 'node', id: nodes[i].id, node: nodes[i], layer: layer[i], w: NODE_W, h: NODE_H, first: i };
    unitOf[i] = unit;
    units.push(unit);
  }
  units.sort((a, b) => a.first - b.first);
  units.forEach((u, k) => {
    u.k = k;
  });

  // Unit edges, deduplicated. An edge spanning several layers passes
  // through a dummy point in each layer between, which takes room there,
  // so edges go around nodes rather than through them.
  const U = units.length;
  const uPreds = units.map(() => []);
  const uSuccs = units.map(() => []);
  const dummies = [];
  const links = [];
  const linkSeen = new Set();
  const join = (a, b) => {
    uSuccs[a.k].push(b.k);
    uPreds[b.k].push(a.k);
  };
  for (let a = 0; a < nodes.length; a++) {
    const ua = unitOf[a];
    for (const b of succs[a]) {
      const ub = unitOf[b];
      if (ua === ub) continue;
      const key = ua.k * U + ub.k;
      if (linkSeen.has(key)) continue;
      linkSeen.add(key);
      const link = { from: ua, to: ub, via: [] };
      let prev = ua;
      for (let l = ua.layer + 1; l < ub.layer; l++) {
        const d = { kind: 'dummy', layer: l, w: 0, h: DUMMY_H, k: U + dummies.length };
        dummies.push(d);
        uPreds.push([]);
        uSuccs.push([]);
        link.via.push(d);
        join(prev, d);
        prev = d;
      }
      join(prev, ub);
      links.push(link);
    }
  }

  // Layers, then a few barycenter sweeps to reduce crossings.
  const all = dummies.length ? units.concat(dummies) : units;
  const layers = [];
  for (const u of all) (layers[u.layer] ||= []).push(u);
  for (let l = 0; l < layers.length; l++) layers[l] ||= [];
  const pos = new Float64Array(all.length);
  const bary = new Float64Array(all.length);
  for (const ls of layers) ls.forEach((u, i) => {
    pos[u.k] = i;
  });
  const sweep = (ls, neighbours) => {
    if (ls.length < 2) return;
    for (const u of ls) {
      const ns = neighbours[u.k];
      if (!ns.length) {
        bary[u.k] = pos[u.k];
        continue;
      }
      let sum = 0;
      for (const n of ns) sum += pos[n];
      bary[u.k] = sum / ns.length;
    }
    ls.sort((a, b) => bary[a.k] - bary[b.k] || pos[a.k] - pos[b.k]);
    ls.forEach((u, i) => {
      pos[u.k] = i;
    });
  };
  for (let iter = 0; iter < 4; iter++) {
    for (let l = 1; l < layers.length; l++) sweep(layers[l], uPreds);
    for (let l = layers.length - 2; l >= 0; l--) sweep(layers[l], uSuccs);
  }

  // Coordinates: columns as wide as their widest unit, layers centred.
  const heights = layers.map((ls) => ls.reduce((sum, u) => sum + u.h, 0) + Math.max(0, ls.length - 1) * GAP_Y);
  const tallest = Math.max(0, ...heights);
  let x = MARGIN;
  layers.forEach((ls, l) => {
    let colW = NODE_W;
    for (const u of ls) colW = Math.max(colW, u.w);
    let y = MARGIN + (tallest - heights[l]) / 2;
    for (const u of ls) {
      if (u.kind === 'dummy') {
        u.x = x;
        u.colW = colW;
      } else u.x = x + (colW - u.w) / 2;
      u.y = y;
      y += u.h + GAP_Y;
    }
    x += colW + GAP_X;
  });
  const anchor = (u) => u.y + (u.kind === 'group' ? GROUP_H / 2 : u.h / 2);
  for (const link of links) {
    link.points = [[link.from.x + link.from.w, anchor(link.from)]];
    for (const d of link.via) {
      const y = d.y + DUMMY_H / 2;
      link.points.push([d.x, y], [d.x + d.colW, y]);
    }
    link.points.push([link.to.x, anchor(link.to)]);
  }
  return {
    units,
    links,
    width: Math.max(x - GAP_X + MARGIN, 2 * MARGIN + NODE_W),
    height: tallest + 2 * MARGIN,
  };
}

/** Curves between columns, straight across the columns an edge passes. */
function edgePath({ points }) {
  let d = `M${points[0][0]},${points[0][1]}`;
  for (let i = 1; i < points.length; i++) {
    const [x1, y1] = points[i - 1];
    const [x2, y2] = points[i];
    if (i % 2 === 0) {
      d += ` L${x2},${y2}`;
      continue;
    }
    const dx = Math.max(20, (x2 - x1) / 2);
    d += ` C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`;
  }
  return d;
}

function nodeSub(node) {
  if (node.status && node.sub) return `${node.status} · ${node.sub}`;
  return node.status || node.sub || '';
}

function nodeTitle(node) {
  let t = node.label && node.label !== node.id ? `${node.label} (${node.id})` : node.id;
  if (node.status) t += `\nstatus: ${node.status}`;
  if (node.sub) t += `\n${node.sub}`;
  if (node.compensation) t += `\ncompensation: ${node.compensation}`;
  return t;
}

function compMarker(status) {
  if (!status) return '';
  return `<g class="comp st-${cls(status)}" transform="translate(${NODE_W - 22},-7)"><title>compensation ${esc(status)}</title><rect width="26" height="16" rx="8"></rect><text x="13" y="12" text-anchor="middle">↺</text></g>`;
}

function nodeMarkup(u, selected) {
  const n = u.node;
  const st = n.status ? ` st-${cls(n.status)}` : '';
  const sel = n.id === selected ? ' selected' : '';
  const status = n.status ? ` data-status="${esc(n.status)}"` : '';
  const label = clip(n.label || n.id, 24);
  return `<g class="node${st}${sel}" data-step="${esc(n.id)}"${status} tabindex="0" role="button" aria-pressed="${n.id === selected}" aria-label="${esc(`${n.label || n.id}${n.status ? `: ${n.status}` : ''}${n.sub ? `, ${n.sub}` : ''}`)}" transform="translate(${u.x},${u.y})">`
    + `<title>${esc(nodeTitle(n))}</title>`
    + `<rect class="box" width="${u.w}" height="${u.h}" rx="8"></rect>`
    + `<text class="label" x="12" y="21">${esc(label)}</text>`
    + `<text class="sub" x="12" y="39">${esc(clip(nodeSub(n), 28))}</text>`
    + compMarker(n.compensation)
    + '</g>';
}

function groupBar(counts, total, width) {
  let x = 0;
  let out = '';
  for (const [s, n] of counts) {
    const w = (n / total) * width;
    out += `<rect class="seg st-${cls(s)}" x="${x.toFixed(2)}" y="0" width="${Math.max(w, 0.5).toFixed(2)}" height="6"></rect>`;
    x += w;
  }
  return out;
}

function groupSummary(u) {
  const counts = countStatuses(u.members);
  const total = u.members.length;
  const text = summaryText(counts, total);
  return `<text class="label" x="12" y="21">${esc(`${fmt(total)} steps`)}<tspan class="muted-t" dx="6">${u.open ? '▾' : '▸'}</tspan></text>`
    + `<text class="sub" x="12" y="39">${esc(clip(text, 34))}</text>`
    + `<g transform="translate(12,${GROUP_H - 16})">${groupBar(counts, total, u.w - 24)}</g>`
    + `<title>${esc(`${fmt(total)} parallel steps ${u.members[0].id} … ${u.members[total - 1].id}\n${text}\n${u.open ? 'Click to collapse' : 'Click to list them'}`)}</title>`;
}

function listItem(n, i, selected) {
  const st = n.status ? ` st-${cls(n.status)}` : '';
  return `<li style="top:${i * ROW_H}px"><button type="button" class="dag-item${n.id === selected ? ' selected' : ''}" data-step="${esc(n.id)}"${n.status ? ` data-status="${esc(n.status)}"` : ''} title="${esc(nodeTitle(n))}">`
    + `<span class="id">${esc(n.label || n.id)}</span>${n.status ? `<span class="badge${st}">${esc(n.status)}</span>` : ''}${n.sub ? `<span class="muted">${esc(n.sub)}</span>` : ''}</button></li>`;
}

function groupMarkup(u, selected, filter) {
  const has = u.members.some((m) => m.id === selected) ? ' has-selected' : '';
  let out = `<g class="node group${u.open ? ' open' : ''}${has}" data-group="${esc(u.id)}" data-count="${u.members.length}" tabindex="0" role="button" aria-expanded="${u.open}" aria-label="${esc(`Group of ${u.members.length} parallel steps; ${summaryText(countStatuses(u.members), u.members.length)}`)}" transform="translate(${u.x},${u.y})">`
    + `<rect class="box" width="${u.w}" height="${u.h}" rx="8"></rect>`
    + `<g class="summary">${groupSummary(u)}</g></g>`;
  if (u.open) {
    // The list is virtual: only the rows in view are in the DOM (fillList).
    out += `<foreignObject x="${u.x + 6}" y="${u.y + GROUP_H}" width="${u.w - 12}" height="${LIST_H - 6}">`
      + `<div xmlns="http://www.w3.org/1999/xhtml" class="dag-list" data-group-list="${esc(u.id)}">`
      + `<input type="search" class="dag-filter" aria-label="Filter these steps by id or status" placeholder="Filter by id or status" value="${esc(filter || '')}">`
      + '<div class="dag-vscroll"><ul class="dag-vlist"></ul></div><p class="dag-count muted"></p></div></foreignObject>';
  }
  return out;
}

function matches(n, q) {
  return !q || n.id.toLowerCase().includes(q) || (n.label || '').toLowerCase().includes(q) || (n.status || '').includes(q);
}

/** Draws the rows of an open group's list that are in view. */
function fillList(container, st, groupId) {
  const list = container.querySelector(`.dag-list[data-group-list="${CSS.escape(groupId)}"]`);
  const unit = st.layout.units.find((u) => u.id === groupId);
  if (!list || !unit) return;
  const q = (st.filters.get(groupId) || '').trim().toLowerCase();
  const shown = q ? unit.members.filter((m) => matches(m, q)) : unit.members;
  const scroller = list.querySelector('.dag-vscroll');
  const ul = list.querySelector('ul');
  ul.style.height = `${shown.length * ROW_H}px`;
  const view = scroller.clientHeight || LIST_H - 60;
  const from = Math.max(0, Math.floor(scroller.scrollTop / ROW_H) - 4);
  const to = Math.min(shown.length, from + Math.ceil(view / ROW_H) + 8);
  const selected = st.data.selected;
  let html = '';
  for (let i = from; i < to; i++) html += listItem(shown[i], i, selected);
  if (ul.__html !== html) {
    const focused = document.activeElement?.closest?.('button.dag-item');
    const refocus = focused && ul.contains(focused) ? focused.dataset.step : null;
    ul.innerHTML = html;
    ul.__html = html;
    if (refocus) ul.querySelector(`[data-step="${CSS.escape(refocus)}"]`)?.focus({ preventScroll: true });
  }
  list.querySelector('.dag-count').textContent = q ? `${fmt(shown.length)} of ${fmt(unit.members.length)} match` : `${fmt(unit.members.length)} steps`;
  return shown;
}

/** The state kept on a container between renders. */
function stateOf(container) {
  if (!container.__dag) {
    container.__dag = {
      uid: ++graphs,
      key: null,
      zoom: 1,
      expanded: new Set(),
      filters: new Map(),
      listScroll: new Map(),
      data: null,
      layout: null,
      selected: null,
    };
  }
  return container.__dag;
}

function structureKey(nodes, edges, expanded) {
  let key = '';
  for (const n of nodes) key += `${n.id}\u0001${n.label || ''}\u0002`;
  key += '\u0003';
  for (const [a, b] of edges || []) key += `${a}\u0001${b}\u0002`;
  return `${key}\u0003${[...expanded].sort().join('\u0001')}`;
}

/** Draws (or updates) the graph in `container`. */
export function renderGraph(container, { nodes = [], edges = [], onSelect, selected = null } = {}) {
  const t0 = performance.now();
  const st = stateOf(container);
  st.data = { nodes, edges, onSelect, selected };
  container.dataset.testid = 'dag';
  container.classList.add('dag');

  // A selected step inside a collapsed group opens it once.
  if (selected && selected !== st.selected) {
    st.selected = selected;
    st.revealPending = true;
  }
  st.selected = selected;

  const key = structureKey(nodes, edges, st.expanded);
  if (key === st.key && container.querySelector('svg.dag-svg')) {
    update(container, st);
  } else {
    let lay = layout({ nodes, edges }, { expanded: st.expanded });
    if (st.revealPending && selected) {
      const group = lay.units.find((u) => u.kind === 'group' && !u.open && u.members.some((m) => m.id === selected));
      if (group) {
        st.expanded.add(group.id);
        lay = layout({ nodes, edges }, { expanded: st.expanded });
      }
    }
    st.key = structureKey(nodes, edges, st.expanded);
    st.layout = lay;
    draw(container, st);
  }
  if (st.revealPending && selected) {
    st.revealPending = false;
    reveal(container, st, selected);
  }
  const ms = performance.now() - t0;
  container.dataset.renderMs = ms.toFixed(1);
  return ms;
}

function draw(container, st) {
  const { layout: lay } = st;
  const { selected } = st.data;
  const scroller = container.querySelector('.dag-scroll');
  const keep = scroller ? { left: scroller.scrollLeft, top: scroller.scrollTop } : null;
  const focused = document.activeElement && container.contains(document.activeElement)
    ? document.activeElement.closest('[data-step],[data-group]')
    : null;
  const focusKey = focused ? (focused.dataset.group ? `g:${focused.dataset.group}` : `s:${focused.dataset.step}`) : null;

  const marker = `dag-arrow-${st.uid}`;
  let edgesOut = '';
  for (const l of lay.links) {
    edgesOut += `<path class="edge" data-from="${esc(l.from.id)}" data-to="${esc(l.to.id)}" d="${edgePath(l)}" marker-end="url(#${marker})"></path>`;
  }
  let nodesOut = '';
  for (const u of lay.units) {
    nodesOut += u.kind === 'group' ? groupMarkup(u, selected, st.filters.get(u.id)) : nodeMarkup(u, selected);
  }
  const z = st.zoom;
  const empty = lay.units.length === 0 ? '<p class="muted dag-empty">No steps.</p>' : '';
  container.innerHTML =
    '<div class="dag-tools" role="toolbar" aria-label="Graph zoom">'
    + '<button type="button" class="ghost" data-zoom="out" aria-label="Zoom out" title="Zoom out">−</button>'
    + `<span class="dag-zoom muted" aria-live="polite">${Math.round(z * 100)}%</span>`
    + '<button type="button" class="ghost" data-zoom="in" aria-label="Zoom in" title="Zoom in">+</button>'
    + '<button type="button" class="ghost" data-zoom="fit" title="Fit the graph in view">Fit</button>'
    + '<button type="button" class="ghost" data-zoom="reset" title="Actual size">100%</button>'
    + '</div>'
    + `<div class="dag-scroll">${empty}<svg class="dag-svg" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${lay.width} ${lay.height}" width="${lay.width * z}" height="${lay.height * z}" role="group" aria-label="Step graph">`
    + `<defs><marker id="${marker}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path class="arrow" d="M0,0 L10,5 L0,10 z"></path></marker></defs>`
    + `<g class="edges">${edgesOut}</g><g class="nodes">${nodesOut}</g></svg></div>`;

  // Map of elements for in-place updates.
  st.els = new Map();
  for (const g of container.querySelectorAll('g.node[data-step]')) st.els.set(g.dataset.step, g);
  st.groupEls = new Map();
  for (const g of container.querySelectorAll('g.node.group')) st.groupEls.set(g.dataset.group, g);
  for (const el of container.querySelectorAll('.dag-list')) {
    const id = el.dataset.groupList;
    el.querySelector('.dag-vscroll').scrollTop = st.listScroll.get(id) || 0;
    fillList(container, st, id);
  }
  highlightEdges(container, st);

  const sc = container.querySelector('.dag-scroll');
  if (!st.zoomed && sc.clientWidth && lay.width > sc.clientWidth) {
    // First sight of a wide graph: shrink it to fit, down to 75%.
    st.zoomed = true;
    setZoom(container, st, Math.max(0.75, sc.clientWidth / lay.width));
  }
  if (sc.clientWidth) st.zoomed = true;
  if (keep) {
    sc.scrollLeft = keep.left;
    sc.scrollTop = keep.top;
  }
  if (focusKey) {
    const el = focusKey.startsWith('g:')
      ? container.querySelector(`g.node.group[data-group="${CSS.escape(focusKey.slice(2))}"]`)
      : container.querySelector(`[data-step="${CSS.escape(focusKey.slice(2))}"]`);
    el?.focus({ preventScroll: true });
  }
  if (!container.__dagWired) wire(container);
}

/** Statuses, texts and selection changed; the shape did not. */
function update(container, st) {
  const { nodes, selected } = st.data;
  const byId = new Map(nodes.map((n) => [n.id, n]));
  for (const u of st.layout.units) {
    if (u.kind === 'node') {
      const n = byId.get(u.id);
      u.node = n;
      const g = st.els.get(u.id);
      if (!g) continue;
      const cl = `node${n.status ? ` st-${cls(n.status)}` : ''}${n.id === selected ? ' selected' : ''}`;
      if (g.getAttribute('class') !== cl) g.setAttribute('class', cl);
      if (n.status) g.dataset.status = n.status;
      else delete g.dataset.status;
      g.setAttribute('aria-pressed', String(n.id === selected));
      g.setAttribute('aria-label', `${n.label || n.id}${n.status ? `: ${n.status}` : ''}${n.sub ? `, ${n.sub}` : ''}`);
      g.querySelector('title').textContent = nodeTitle(n);
      const sub = g.querySelector('text.sub');
      const text = clip(nodeSub(n), 28);
      if (sub.textContent !== text) sub.textContent = text;
      const comp = g.querySelector('g.comp');
      if ((comp?.querySelector('title')?.textContent || null) !== (n.compensation ? `compensation ${n.compensation}` : null)) {
        comp?.remove();
        if (n.compensation) g.insertAdjacentHTML('beforeend', compMarker(n.compensation));
      }
    } else {
      u.members = u.members.map((m) => byId.get(m.id) || m);
      const g = st.groupEls.get(u.id);
      if (!g) continue;
      const summary = g.querySelector('g.summary');
      const html = groupSummary(u);
      if (summary.__html !== html) {
        summary.innerHTML = html;
        summary.__html = html;
      }
      g.classList.toggle('has-selected', u.members.some((m) => m.id === selected));
      g.setAttribute('aria-label', `Group of ${u.members.length} parallel steps; ${summaryText(countStatuses(u.members), u.members.length)}`);
      if (u.open) fillList(container, st, u.id);
    }
  }
  highlightEdges(container, st);
}

function highlightEdges(container, st) {
  const sel = st.data.selected;
  let unitId = sel;
  if (sel && !st.els?.has(sel)) {
    const g = st.layout.units.find((u) => u.kind === 'group' && u.members.some((m) => m.id === sel));
    unitId = g ? g.id : null;
  }
  for (const p of container.querySelectorAll('path.edge.hot')) p.classList.remove('hot');
  if (!unitId) return;
  const q = CSS.escape(unitId);
  for (const p of container.querySelectorAll(`path.edge[data-from="${q}"], path.edge[data-to="${q}"]`)) p.classList.add('hot');
}

function reveal(container, st, id) {
  const sc = container.querySelector('.dag-scroll');
  if (!sc) return;
  let el = container.querySelector(`g.node[data-step="${CSS.escape(id)}"]`);
  if (!el) {
    const unit = st.layout.units.find((u) => u.kind === 'group' && u.open && u.members.some((m) => m.id === id));
    if (!unit) return;
    const list = container.querySelector(`.dag-list[data-group-list="${CSS.escape(unit.id)}"]`);
    const scroller = list?.querySelector('.dag-vscroll');
    if (!scroller) return;
    st.filters.delete(unit.id);
    list.querySelector('input.dag-filter').value = '';
    const i = unit.members.findIndex((m) => m.id === id);
    const top = i * ROW_H;
    if (top < scroller.scrollTop || top + ROW_H > scroller.scrollTop + scroller.clientHeight) {
      scroller.scrollTop = Math.max(0, top - scroller.clientHeight / 2);
      st.listScroll.set(unit.id, scroller.scrollTop);
    }
    fillList(container, st, unit.id);
    el = list.closest('foreignObject');
  }
  const box = el.getBoundingClientRect();
  const sb = sc.getBoundingClientRect();
  if (box.right > sb.right || box.left < sb.left) sc.scrollLeft += box.left - sb.left - sb.width / 3;
  if (box.bottom > sb.bottom || box.top < sb.top) sc.scrollTop += box.top - sb.top - sb.height / 3;
}

function setZoom(container, st, z) {
  st.zoomed = true;
  st.zoom = Math.min(3, Math.max(0.1, z));
  const svg = container.querySelector('svg.dag-svg');
  svg.setAttribute('width', st.layout.width * st.zoom);
  svg.setAttribute('height', st.layout.height * st.zoom);
  container.querySelector('.dag-zoom').textContent = `${Math.round(st.zoom * 100)}%`;
}

/** Event delegation, once per container: clicks, keys, zoom, filters. */
function wire(container) {
  container.__dagWired = true;
  const act = (target) => {
    const st = container.__dag;
    const zoom = target.closest('button[data-zoom]');
    if (zoom) {
      const sc = container.querySelector('.dag-scroll');
      const kind = zoom.dataset.zoom;
      if (kind === 'in') setZoom(container, st, st.zoom * 1.25);
      else if (kind === 'out') setZoom(container, st, st.zoom / 1.25);
      else if (kind === 'reset') setZoom(container, st, 1);
      else {
        // The scroll area grows up to 70% of the window's height (app.css).
        const room = Math.max(sc.clientHeight, window.innerHeight * 0.7);
        const fit = Math.min(sc.clientWidth / st.layout.width, room / st.layout.height, 1);
        setZoom(container, st, fit > 0 ? fit : 1);
      }
      return true;
    }
    const item = target.closest('button.dag-item, g.node[data-step]');
    if (item) {
      st.data.onSelect?.(item.dataset.step);
      return true;
    }
    const group = target.closest('g.node.group');
    if (group) {
      const id = group.dataset.group;
      if (st.expanded.has(id)) st.expanded.delete(id);
      else st.expanded.add(id);
      renderGraph(container, st.data);
      container.querySelector(`g.node.group[data-group="${CSS.escape(id)}"]`)?.focus({ preventScroll: true });
      return true;
    }
    return false;
  };
  container.addEventListener('click', (event) => {
    if (event.target.closest('input')) return;
    act(event.target);
  });
  container.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' && event.key !== ' ') return;
    const g = event.target.closest('g.node');
    if (!g || event.target !== g) return;
    event.preventDefault();
    act(g);
  });
  container.addEventListener('input', (event) => {
    const input = event.target.closest('input.dag-filter');
    if (!input) return;
    const st = container.__dag;
    const list = input.closest('.dag-list');
    const id = list.dataset.groupList;
    st.filters.set(id, input.value);
    list.querySelector('.dag-vscroll').scrollTop = 0;
    st.listScroll.set(id, 0);
    fillList(container, st, id);
  });
  // Scrolling a group's list draws the rows coming into view.
  let pending = null;
  container.addEventListener(
    'scroll',
    (event) => {
      const scroller = event.target;
      if (!(scroller instanceof HTMLElement) || !scroller.classList.contains('dag-vscroll')) return;
      const id = scroller.closest('.dag-list').dataset.groupList;
      container.__dag.listScroll.set(id, scroller.scrollTop);
      if (pending) return;
      pending = requestAnimationFrame(() => {
        pending = null;
        fillList(container, container.__dag, id);
      });
    },
    true,
  );
}
