// Filter bars and paging shared by the list pages (runs, events, dead
// letters, schedules): labelled fields, time inputs that read and write
// RFC 3339 in the URL, and a "Load more" button.

import * as api from './api.js';
import { h, shortId } from './ui.js';

/** A `.field` of a `.toolbar`: a `<label for>` above its control. */
export function field(label, control) {
  return h('div', { class: 'field' }, h('label', { for: control.id, text: label }), control);
}

/**
 * A <select> of `options` ([value, text] pairs or plain values) with a
 * first empty choice `any`; `value` selected (added when it is not one of
 * the options, so a shared URL with a value we do not list still shows it).
 */
export function select(id, options, value, { any = 'Any', onchange } = {}) {
  const pairs = options.map((o) => (Array.isArray(o) ? o : [o, o]));
  if (value && !pairs.some(([v]) => v === value)) pairs.push([value, value]);
  const el = h(
    'select',
    { id, onchange },
    any === null ? null : h('option', { value: '', text: any }),
    pairs.map(([v, text]) => h('option', { value: v, text, selected: v === value })),
  );
  return el;
}

/** A text input committing on change (Enter or leaving the field). */
export function text(id, value, { placeholder, onchange, list } = {}) {
  // `search` also fires when the field's clear button empties it.
  return h('input', { id, type: 'search', value: value || '', placeholder, onchange, onsearch: onchange, list, autocomplete: 'off' });
}

const pad = (n) => String(n).padStart(2, '0');

/** An RFC 3339 time as a `datetime-local` value in local time. */
export function toLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A `datetime-local` value (local time) as RFC 3339 UTC, or '' when empty. */
export function fromLocalInput(value) {
  if (!value) return '';
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

/** A `datetime-local` input showing the RFC 3339 time `iso`. */
export function datetime(id, iso, { onchange } = {}) {
  return h('input', { id, type: 'datetime-local', value: toLocalInput(iso), onchange });
}

/** Quick time ranges: [label, milliseconds]. */
export const RANGES = [
  ['Last hour', 3600e3],
  ['Last 24 h', 24 * 3600e3],
  ['Last 7 days', 7 * 24 * 3600e3],
];

/** Every page of a list (`{items, next_cursor}`), up to `max` items. */
export async function all(path, query, { signal, max = 2000 } = {}) {
  const items = [];
  let cursor;
  do {
    const page = await api.get(path, { ...query, cursor, limit: 500 }, { signal });
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

/** The text of an API error for a toast: the problem's detail or title. */
export function problemText(error) {
  return error?.problem?.detail || error?.problem?.title || error?.message || String(error);
}

/** Whether `error` is the page being left (a fetch aborted): not worth showing. */
export function aborted(error, signal) {
  return signal?.aborted || error?.name === 'AbortError';
}

/** An id in a list (see `shortId`). */
export const idCode = shortId;

/**
 * Binds a page's filters to its URL: `apply(values)` merges them into
 * `filters`, puts them in the query string and calls `reload`;
 * `onChange(key)` is an input's change handler applying its trimmed value.
 */
export function bindFilters(ctx, filters, reload) {
  const apply = (values) => {
    Object.assign(filters, values);
    ctx.setQuery(values);
    reload();
  };
  const onChange = (key) => (event) => {
    const value = event.target.value.trim();
    if (value !== filters[key]) apply({ [key]: value });
  };
  return { apply, onChange };
}
