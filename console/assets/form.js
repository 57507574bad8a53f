// A form generated from a Promise's request schema (the JSON Schema subset
// Promises use: objects with properties and required, string / integer /
// number / boolean / array / object, enum, default, minimum / maximum,
// minLength / maxLength / pattern, description, nested objects, arrays of
// scalars and `additionalProperties` maps). Anything else is edited as JSON.
//
// Every input has `id="field-<path>"` (`name`, `labels.owner`, `regions.0`)
// and a `<label for>`; errors go in `.field-error[data-field="<path>"]`
// under their field. Client checks mirror the schema; the server's 422 is
// the authority and `showErrors` places its errors the same way.

import { h, mount } from './ui.js';

const SCALARS = new Set(['string', 'integer', 'number', 'boolean']);

/** The schema's type, ignoring `null` in a type list. */
function typeOf(s) {
  if (!s || typeof s !== 'object') return 'json';
  let t = Array.isArray(s.type) ? s.type.filter((x) => x !== 'null') : s.type;
  if (Array.isArray(t)) t = t.length === 1 ? t[0] : undefined;
  if (Array.isArray(s.enum) && s.enum.length) return 'enum';
  if ('const' in s) return 'enum';
  if (t) return t;
  if (s.properties || (s.additionalProperties && typeof s.additionalProperties === 'object')) return 'object';
  return 'json';
}

/** Sets an own property, whatever its name (`__proto__` included). */
function put(obj, key, value) {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

const childPath = (path, key) => (path ? `${path}.${key}` : String(key));
const fieldId = (path) => `field-${path}`;

/** Characters, not UTF-16 units, as JSON Schema counts them. */
const length = (s) => [...s].length;

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** A short human line of the schema's constraints, shown under the field. */
function constraints(s) {
  const parts = [];
  if (s.minLength !== undefined && s.maxLength !== undefined) parts.push(`${s.minLength}–${s.maxLength} characters`);
  else if (s.minLength !== undefined) parts.push(`at least ${plural(s.minLength, 'character')}`);
  else if (s.maxLength !== undefined) parts.push(`at most ${plural(s.maxLength, 'character')}`);
  const min = s.minimum ?? s.exclusiveMinimum;
  const max = s.maximum ?? s.exclusiveMaximum;
  if (min !== undefined && max !== undefined) parts.push(`${min} to ${max}`);
  else if (min !== undefined) parts.push(`${s.exclusiveMinimum !== undefined ? 'more than' : 'at least'} ${min}`);
  else if (max !== undefined) parts.push(`${s.exclusiveMaximum !== undefined ? 'less than' : 'at most'} ${max}`);
  if (s.minItems !== undefined) parts.push(`at least ${plural(s.minItems, 'item')}`);
  if (s.maxItems !== undefined) parts.push(`at most ${plural(s.maxItems, 'item')}`);
  if (s.pattern) parts.push(`pattern ${s.pattern}`);
  if (s.format) parts.push(`format ${s.format}`);
  return parts.join(' · ');
}

/**
 * Builds the form. `values` pre-fill it (over the schema's defaults).
 * Returns `{element, value(), validate(), showErrors(errors), focusFirstError()}`:
 * `value()` is the params object with JSON types (empty optional fields
 * omitted); `validate()` runs the client checks, shows and returns them as
 * `[{path, message}]`; `showErrors([{path, message}])` shows errors (the
 * server's, say) at their fields and returns those it could not place.
 */
export function schemaForm(schema, { values } = {}) {
  /** path -> {box, inputs}: where a path's errors go. */
  const registry = new Map();
  /** path -> map editor, to place errors at `<map>.<key>`. */
  const maps = new Map();
  let shown = [];

  const ctx = { registry, maps };
  const rootSchema = schema && typeof schema === 'object' ? schema : {};
  let root;
  if (typeOf(rootSchema) === 'object' && (rootSchema.properties || typeof rootSchema.additionalProperties === 'object')) {
    root = objectNode(ctx, rootSchema, '', '', false, values ?? {}, true);
  } else {
    // No properties to draw: the params as one JSON object.
    root = jsonNode(ctx, { type: 'object', description: rootSchema.description }, 'params', 'Parameters (JSON object)', false, values ?? {});
  }
  const anyRequired = Array.isArray(rootSchema.required) && rootSchema.required.length > 0;
  const element = h(
    'div',
    { class: 'schema-form' },
    anyRequired ? h('p', { class: 'muted form-note' }, 'Fields marked ', h('span', { class: 'req', text: '*' }), ' are required.') : null,
    root.element,
  );

  function collect() {
    const errors = [];
    const value = root.collect(errors);
    return { value: value === undefined ? {} : value, errors };
  }

  function locate(path) {
    let p = path;
    for (;;) {
      const exact = registry.get(p);
      if (exact) return exact;
      for (const [mapPath, map] of maps) {
        if (mapPath === p || !p.startsWith(mapPath ? `${mapPath}.` : '')) continue;
        const rest = mapPath ? p.slice(mapPath.length + 1) : p;
        const row = map.rowFor(rest);
        if (row) return row;
      }
      if (!p) return null;
      const dot = p.lastIndexOf('.');
      p = dot < 0 ? '' : p.slice(0, dot);
      if (!p && !registry.has('')) return null;
    }
  }

  function clear() {
    for (const { el, inputs, id } of shown) {
      el.remove();
      for (const input of inputs) {
        input.removeAttribute('aria-invalid');
        const described = (input.getAttribute('aria-describedby') || '').split(' ').filter((x) => x && x !== id);
        if (described.length) input.setAttribute('aria-describedby', described.join(' '));
        else input.removeAttribute('aria-describedby');
      }
    }
    shown = [];
  }

  function showErrors(errors) {
    clear();
    const unplaced = [];
    const byBox = new Map();
    for (const error of errors || []) {
      const at = error.at || locate(error.path ?? '');
      if (!at) {
        unplaced.push(error);
        continue;
      }
      const key = `${error.path}\u0000`;
      let entry = byBox.get(at.box);
      if (!entry) byBox.set(at.box, (entry = new Map()));
      const list = entry.get(key) || { path: error.path, at, messages: [] };
      list.messages.push(error.message);
      entry.set(key, list);
    }
    let n = 0;
    for (const entry of byBox.values()) {
      for (const { path, at, messages } of entry.values()) {
        const id = `error-${++n}-${path || 'params'}`;
        const el = h('p', { class: 'field-error', id, dataset: { field: path }, text: [...new Set(messages)].join(' ') });
        at.box.append(el);
        for (const input of at.inputs) {
          input.setAttribute('aria-invalid', 'true');
          const described = (input.getAttribute('aria-describedby') || '').split(' ').filter(Boolean);
          input.setAttribute('aria-describedby', [...described, id].join(' '));
        }
        shown.push({ el, inputs: at.inputs, id });
      }
    }
    return unplaced;
  }

  return {
    element,
    value: () => collect().value,
    validate() {
      const { errors } = collect();
      showErrors(errors);
      return errors;
    },
    showErrors,
    focusFirstError() {
      const first = element.querySelector('[aria-invalid="true"]');
      first?.focus();
      return Boolean(first);
    },
    /** Focuses the field of `path` (for an error summary's links). */
    focus(path) {
      const at = locate(path);
      at?.inputs[0]?.focus();
      return Boolean(at);
    },
  };
}

/** The node for `s` at `path`: `{element, collect(errors), current()}`. */
function node(ctx, s, path, name, required, initial) {
  const label = s?.title || name;
  const start = initial !== undefined ? initial : s?.default;
  switch (typeOf(s)) {
    case 'enum':
      return enumNode(ctx, s, path, label, required, start);
    case 'string':
    case 'integer':
    case 'number':
      return inputNode(ctx, s, path, label, required, start);
    case 'boolean':
      return boolNode(ctx, s, path, label, required, start);
    case 'object':
      if (s.properties || typeof s.additionalProperties === 'object') {
        return objectNode(ctx, s, path, label, required, start, false);
      }
      return jsonNode(ctx, s, path, label, required, start);
    case 'array':
      if (SCALARS.has(typeOf(s.items)) || typeOf(s.items) === 'enum') return arrayNode(ctx, s, path, label, required, start);
      return jsonNode(ctx, s, path, label, required, start);
    default:
      return jsonNode(ctx, s, path, label, required, start);
  }
}

function labelFor(id, label, required) {
  return h('label', { for: id }, label, required ? h('span', { class: 'req', 'aria-hidden': 'true', text: ' *' }) : null);
}

/** The help line under a field: its description and constraints. */
function help(s, id) {
  const description = s?.description;
  const limits = constraints(s || {});
  if (!description && !limits) return null;
  return h(
    'p',
    { class: 'help', id },
    description ? h('span', { text: description }) : null,
    description && limits ? ' · ' : null,
    limits ? h('span', { class: 'constraints', text: limits }) : null,
  );
}

/** A field's box: label, control, help; errors are appended to it. */
function fieldBox(ctx, s, path, label, required, control, { inline = false } = {}) {
  const helpId = `help-${path}`;
  const helpEl = help(s, helpId);
  if (helpEl) control.setAttribute('aria-describedby', helpId);
  const box = h(
    'div',
    { class: `form-field${inline ? ' inline' : ''}`, dataset: { path } },
    inline ? [control, labelFor(control.id, label, required)] : [labelFor(control.id, label, required), control],
    helpEl,
  );
  ctx.registry.set(path, { box, inputs: [control] });
  return box;
}

/** Checks a string against the schema; pushes errors. */
function checkString(s, v, path, errors, at) {
  if (s.minLength !== undefined && length(v) < s.minLength) {
    errors.push({ path, at, message: `Use at least ${plural(s.minLength, 'character')}.` });
  }
  if (s.maxLength !== undefined && length(v) > s.maxLength) {
    errors.push({ path, at, message: `Use at most ${plural(s.maxLength, 'character')}.` });
  }
  if (s.pattern) {
    let re = null;
    try {
      re = new RegExp(s.pattern, 'u');
    } catch {
      /* a pattern JavaScript cannot read: the server checks it */
    }
    if (re && !re.test(v)) errors.push({ path, at, message: `Does not match the pattern ${s.pattern}.` });
  }
}

/** Checks a number against the schema; pushes errors. */
function checkNumber(s, n, path, errors, at, integer) {
  if (integer && !Number.isInteger(n)) errors.push({ path, at, message: 'Enter a whole number.' });
  if (s.minimum !== undefined && n < s.minimum) errors.push({ path, at, message: `Must be at least ${s.minimum}.` });
  if (s.maximum !== undefined && n > s.maximum) errors.push({ path, at, message: `Must be at most ${s.maximum}.` });
  if (typeof s.exclusiveMinimum === 'number' && n <= s.exclusiveMinimum) {
    errors.push({ path, at, message: `Must be more than ${s.exclusiveMinimum}.` });
  }
  if (typeof s.exclusiveMaximum === 'number' && n >= s.exclusiveMaximum) {
    errors.push({ path, at, message: `Must be less than ${s.exclusiveMaximum}.` });
  }
  if (typeof s.multipleOf === 'number' && s.multipleOf > 0 && Math.abs(n / s.multipleOf - Math.round(n / s.multipleOf)) > 1e-9) {
    errors.push({ path, at, message: `Must be a multiple of ${s.multipleOf}.` });
  }
}

/** A number bound for an input's min/max (draft 4's boolean exclusives ignored). */
function bound(inclusive, exclusive) {
  if (typeof inclusive === 'number') return inclusive;
  return typeof exclusive === 'number' ? exclusive : undefined;
}

/** A bare control for a scalar (used alone, in arrays and in maps). */
function scalarControl(s, id, start, required) {
  const type = typeOf(s);
  if (type === 'enum') {
    const options = Array.isArray(s.enum) ? s.enum : [s.const];
    const chosen = start === undefined ? undefined : JSON.stringify(start);
    const placeholder = !required || start === undefined || !options.some((o) => JSON.stringify(o) === chosen);
    return {
      el: h(
        'select',
        { id, required },
        placeholder ? h('option', { value: '', text: required ? '— choose —' : '(none)' }) : null,
        options.map((o) => {
          const value = JSON.stringify(o);
          return h('option', { value, text: o === null ? 'null' : String(o), selected: value === chosen });
        }),
      ),
      read(el) {
        return el.value === '' ? undefined : JSON.parse(el.value);
      },
      current(el) {
        return el.value === '' ? undefined : JSON.parse(el.value);
      },
    };
  }
  if (type === 'boolean') {
    return {
      el: h('input', { id, type: 'checkbox', checked: start === true }),
      read: (el) => el.checked,
      current: (el) => el.checked,
    };
  }
  const numeric = type === 'integer' || type === 'number';
  const inputType = numeric
    ? 'number'
    : { email: 'email', uri: 'url', date: 'date' }[s.format] || 'text';
  const el = h('input', {
    id,
    type: inputType,
    value: start === undefined || start === null ? '' : typeof start === 'object' ? JSON.stringify(start) : String(start),
    required,
    step: numeric ? (type === 'integer' ? '1' : 'any') : undefined,
    min: numeric ? bound(s.minimum, s.exclusiveMinimum) : undefined,
    max: numeric ? bound(s.maximum, s.exclusiveMaximum) : undefined,
    minlength: numeric ? undefined : s.minLength,
    maxlength: numeric ? undefined : s.maxLength,
    inputmode: type === 'integer' ? 'numeric' : undefined,
    placeholder: s.format === 'date-time' ? '2026-12-03T01:00:00Z' : s.examples?.[0] !== undefined ? String(s.examples[0]) : undefined,
    autocomplete: 'off',
    spellcheck: numeric ? undefined : 'false',
  });
  return {
    el,
    numeric,
    read: (input) => input.value,
    current: (input) => input.value,
  };
}

/** Reads a scalar control as a JSON value with its checks; undefined when empty. */
function readScalar(s, control, el, path, required, errors, at) {
  const type = typeOf(s);
  if (type === 'enum') {
    const v = control.read(el);
    if (v === undefined && required) errors.push({ path, at, message: 'Choose a value.' });
    return v;
  }
  if (type === 'boolean') return control.read(el);
  const raw = el.value.trim();
  if (raw === '') {
    if (control.numeric && el.validity?.badInput) {
      errors.push({ path, at, message: 'Enter a number.' });
      return undefined;
    }
    if (required) errors.push({ path, at, message: 'Required.' });
    return undefined;
  }
  if (control.numeric) {
    const n = Number(raw);
    if (!Number.isFinite(n)) {
      errors.push({ path, at, message: 'Enter a number.' });
      return undefined;
    }
    checkNumber(s, n, path, errors, at, type === 'integer');
    return n;
  }
  const v = el.value; // strings keep their spaces
  checkString(s, v, path, errors, at);
  return v;
}

function inputNode(ctx, s, path, label, required, start) {
  const control = scalarControl(s, fieldId(path), start, required);
  const element = fieldBox(ctx, s, path, label, required, control.el);
  return {
    element,
    collect: (errors) => readScalar(s, control, control.el, path, required, errors),
    current: () => control.current(control.el),
  };
}

function enumNode(ctx, s, path, label, required, start) {
  return inputNode(ctx, s, path, label, required, start);
}

function boolNode(ctx, s, path, label, required, start) {
  const control = scalarControl(s, fieldId(path), start, required);
  let touched = false;
  control.el.addEventListener('change', () => {
    touched = true;
  });
  const element = fieldBox(ctx, s, path, label, required, control.el, { inline: true });
  return {
    element,
    // An optional box nobody touched, without a default, is left out.
    collect: () => (control.el.checked || touched || required || s.default !== undefined ? control.el.checked : undefined),
    current: () => control.el.checked,
  };
}

/** Anything the form cannot draw: edited as JSON text. */
function jsonNode(ctx, s, path, label, required, start) {
  const id = fieldId(path);
  const el = h('textarea', {
    id,
    class: 'json-input',
    rows: 4,
    required,
    spellcheck: 'false',
    placeholder: typeOf(s) === 'array' ? '[ … ]' : typeOf(s) === 'object' ? '{ … }' : 'JSON',
  });
  el.value = start === undefined ? '' : JSON.stringify(start, null, 2);
  const said = s?.description ? `${s.description}${/[.!?]$/.test(s.description) ? '' : '.'} ` : '';
  const element = fieldBox(ctx, { ...s, description: `${said}As JSON.` }, path, label, required, el);
  const boxPath = path === 'params' && ctx.registry.get('params') ? 'params' : path;
  if (boxPath === 'params') ctx.registry.set('', ctx.registry.get('params'));
  return {
    element,
    collect(errors) {
      const raw = el.value.trim();
      if (!raw) {
        if (required) errors.push({ path, message: 'Required.' });
        return path === 'params' ? {} : undefined;
      }
      let v;
      try {
        v = JSON.parse(raw);
      } catch (e) {
        errors.push({ path, message: `Not valid JSON: ${e.message}` });
        return undefined;
      }
      const want = typeOf(s);
      const got = Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v;
      if ((want === 'object' || want === 'array') && got !== want) {
        errors.push({ path, message: `Must be a JSON ${want}.` });
      }
      return v;
    },
    current() {
      try {
        return JSON.parse(el.value);
      } catch {
        return undefined;
      }
    },
  };
}

function objectNode(ctx, s, path, label, required, start, isRoot) {
  const props = s.properties && typeof s.properties === 'object' ? s.properties : {};
  const req = new Set(Array.isArray(s.required) ? s.required : []);
  const init = start && typeof start === 'object' && !Array.isArray(start) ? start : {};
  const given = (key) => (Object.hasOwn(init, key) ? init[key] : undefined);
  // Required fields first (in `required` order), then the optional ones:
  // single fields before lists and groups (stored schemas come back with
  // their properties sorted by name, so the written order is lost anyway).
  const rank = (k) => ({ string: 0, integer: 0, number: 0, boolean: 0, enum: 0, array: 1 })[typeOf(props[k])] ?? 2;
  const optional = Object.keys(props).filter((k) => !req.has(k));
  const order = [...[...req].filter((k) => Object.hasOwn(props, k)), ...optional.sort((a, b) => rank(a) - rank(b))];
  const children = order.map((key) => [key, props[key]]).map(([key, child]) => [
    key,
    node(ctx, child, childPath(path, key), key, req.has(key), given(key)),
  ]);
  let extra = null;
  if (s.additionalProperties && typeof s.additionalProperties === 'object') {
    const rest = Object.fromEntries(Object.entries(init).filter(([k]) => !Object.hasOwn(props, k)));
    extra = mapEditor(ctx, s.additionalProperties, path, label, rest, Object.keys(props).length > 0);
  }
  const inner = [children.map(([, c]) => c.element), extra?.element];
  let element;
  if (isRoot) {
    element = h('div', { class: 'form-object root' }, inner);
  } else {
    const legendId = `legend-${path}`;
    element = h(
      'fieldset',
      { class: 'form-object', dataset: { path } },
      h('legend', { id: legendId }, label, required ? h('span', { class: 'req', 'aria-hidden': 'true', text: ' *' }) : null),
      help(s, `help-${path}`),
      inner,
    );
    ctx.registry.set(path, { box: element, inputs: [] });
  }
  return {
    element,
    collect(errors) {
      const mine = [];
      const value = {};
      for (const [key, child] of children) {
        const v = child.collect(mine);
        if (v !== undefined) put(value, key, v);
      }
      if (extra) for (const [k, v] of Object.entries(extra.collect(mine))) put(value, k, v);
      if (!isRoot && !required && Object.keys(value).length === 0) {
        // An optional object left empty is left out, with its checks.
        return undefined;
      }
      errors.push(...mine);
      return value;
    },
    current() {
      const value = {};
      for (const [key, child] of children) {
        const v = child.current();
        if (v !== undefined && v !== '') put(value, key, v);
      }
      if (extra) for (const [k, v] of Object.entries(extra.current())) put(value, k, v);
      return value;
    },
  };
}

/** `additionalProperties` as key/value rows. */
function mapEditor(ctx, valueSchema, path, label, start, hasProps) {
  const rows = [];
  let counter = 0;
  const list = h('div', { class: 'map-rows' });
  const addButton = h('button', {
    type: 'button',
    class: 'add-row',
    id: `add-${path || 'params'}`,
    text: 'Add entry',
    'aria-label': `Add an entry to ${label || 'the parameters'}`,
    onclick: () => {
      const row = addRow('', undefined);
      row.key.focus();
    },
  });
  const scalar = SCALARS.has(typeOf(valueSchema)) || typeOf(valueSchema) === 'enum';

  function addRow(key, value) {
    const i = counter++;
    const base = `${path ? `${path}.` : ''}${i}`;
    const keyInput = h('input', { id: `field-${base}.key`, type: 'text', value: key, autocomplete: 'off', spellcheck: 'false', class: 'map-key' });
    let control;
    let valueEl;
    if (scalar) {
      control = scalarControl(valueSchema, `field-${base}.value`, value, false);
      valueEl = control.el;
    } else {
      valueEl = h('textarea', { id: `field-${base}.value`, rows: 2, class: 'json-input', spellcheck: 'false' });
      valueEl.value = value === undefined ? '' : JSON.stringify(value);
    }
    const box = h('div', { class: 'map-row' });
    const row = { key: keyInput, value: valueEl, control, box };
    const remove = h('button', {
      type: 'button',
      class: 'ghost remove-row',
      text: 'Remove',
      'aria-label': `Remove entry ${i + 1} of ${label || 'the parameters'}`,
      onclick: () => {
        rows.splice(rows.indexOf(row), 1);
        box.remove();
        addButton.focus();
      },
    });
    mount(
      box,
      h('div', { class: 'map-cell' }, h('label', { for: keyInput.id, class: 'small', text: 'Key' }), keyInput),
      h('div', { class: 'map-cell' }, h('label', { for: valueEl.id, class: 'small', text: 'Value' }), valueEl),
      remove,
    );
    rows.push(row);
    list.append(box);
    return row;
  }

  for (const [k, v] of Object.entries(start || {})) addRow(k, v);

  const map = {
    rowFor(key) {
      const row = rows.find((r) => r.key.value.trim() === key);
      return row ? { box: row.box, inputs: [row.value] } : null;
    },
  };
  ctx.maps.set(path, map);

  const element = h(
    'div',
    { class: 'form-map', dataset: { path } },
    hasProps ? h('p', { class: 'small muted', text: 'Other entries' }) : null,
    list,
    addButton,
  );
  function collect(errors) {
    const out = {};
    for (const row of rows) {
      const key = row.key.value.trim();
      const at = { box: row.box, inputs: [row.key, row.value] };
      let value;
      const p = childPath(path, key);
      if (scalar) {
        value = readScalar(valueSchema, row.control, row.value, p, false, errors, at);
        if (value === undefined && typeOf(valueSchema) === 'string' && row.value.value === '' && key) value = '';
      } else if (row.value.value.trim()) {
        try {
          value = JSON.parse(row.value.value);
        } catch (e) {
          errors.push({ path: p, at, message: `Not valid JSON: ${e.message}` });
        }
      }
      if (!key) {
        if (value !== undefined && value !== '') errors.push({ path: p, at: { box: row.box, inputs: [row.key] }, message: 'Give the entry a key.' });
        continue;
      }
      if (Object.hasOwn(out, key)) {
        errors.push({ path: p, at, message: `The key ${key} is given twice.` });
        continue;
      }
      if (value !== undefined) put(out, key, value);
    }
    return out;
  }
  return { element, collect, current: () => collect([]) };
}

/** An array of scalars: one input per item, with add and remove buttons. */
function arrayNode(ctx, s, path, label, required, start) {
  const itemSchema = s.items;
  const list = h('div', { class: 'array-items' });
  let items = [];
  const addButton = h('button', {
    type: 'button',
    class: 'add-row',
    id: `add-${path}`,
    text: 'Add item',
    'aria-label': `Add an item to ${label}`,
    onclick: () => {
      draw([...items.map((it) => it.current()), undefined]);
      items[items.length - 1]?.el.focus();
    },
  });

  function draw(values) {
    for (const key of [...ctx.registry.keys()]) if (key.startsWith(`${path}.`)) ctx.registry.delete(key);
    items = values.map((v, i) => {
      const p = `${path}.${i}`;
      const control = scalarControl(itemSchema, fieldId(p), v, false);
      const box = h('div', { class: 'array-item', dataset: { path: p } });
      const item = {
        el: control.el,
        control,
        box,
        current: () => control.current(control.el),
      };
      mount(
        box,
        h('label', { for: control.el.id, class: 'small item-label', text: `${label} ${i + 1}` }),
        control.el,
        h('button', {
          type: 'button',
          class: 'ghost remove-row',
          text: 'Remove',
          'aria-label': `Remove ${label} ${i + 1}`,
          onclick: () => {
            const rest = items.map((it) => it.current());
            rest.splice(i, 1);
            draw(rest);
            const next = items[i] || items[i - 1];
            if (next) next.el.focus();
            else addButton.focus();
          },
        }),
      );
      ctx.registry.set(p, { box, inputs: [control.el] });
      return item;
    });
    mount(list, items.map((it) => it.box));
  }

  draw(Array.isArray(start) ? start : []);
  const element = h(
    'fieldset',
    { class: 'form-array', dataset: { path } },
    h('legend', {}, label, required ? h('span', { class: 'req', 'aria-hidden': 'true', text: ' *' }) : null),
    help(s, `help-${path}`),
    list,
    addButton,
  );
  ctx.registry.set(path, { box: element, inputs: [] });
  return {
    element,
    collect(errors) {
      const values = [];
      items.forEach((it, i) => {
        const v = readScalar(itemSchema, it.control, it.el, `${path}.${i}`, false, errors);
        if (v !== undefined) values.push(v);
      });
      if (!values.length && !required) return undefined;
      if (s.minItems !== undefined && values.length < s.minItems) {
        errors.push({ path, message: `Give at least ${plural(s.minItems, 'item')}.` });
      }
      if (s.maxItems !== undefined && values.length > s.maxItems) {
        errors.push({ path, message: `Give at most ${plural(s.maxItems, 'item')}.` });
      }
      if (s.uniqueItems && new Set(values.map((v) => JSON.stringify(v))).size !== values.length) {
        errors.push({ path, message: 'Items must be unique.' });
      }
      return values;
    },
    current: () => items.map((it) => it.current()),
  };
}

/**
 * The server's validation errors as `[{path, message}]`: `invalid-params`
 * gives `errors[].pointer` (`/params/labels/owner`) and `detail`; a missing
 * required property is reported at its object, so its name is read from
 * the message (`"name" is a required property`).
 */
export function serverErrors(problem) {
  const out = [];
  for (const e of problem?.errors || []) {
    const pointer = e.pointer ?? e.path ?? '';
    const message = e.detail || e.message || String(e.code || 'invalid');
    let segments = String(pointer)
      .split('/')
      .slice(1)
      .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
    if (segments[0] === 'params') segments = segments.slice(1);
    const missing = /^"((?:[^"\\]|\\.)*)" is a required property/.exec(message);
    if (missing) segments.push(JSON.parse(`"${missing[1]}"`));
    out.push({ path: segments.join('.'), message });
  }
  return out;
}
