// The console's shell: routing, the token prompt and the theme.
//
// Every page has its own URL under /ui (filters in the query string), so
// any view can be shared. Links inside the console are followed without a
// reload; each page is a module whose default export renders into <main>.

import * as api from './api.js';
import { h, mount, errorBox } from './ui.js';

const ROUTES = [
  [/^\/ui\/?$/, () => import('./pages/runs.js')],
  [/^\/ui\/runs\/?$/, () => import('./pages/runs.js')],
  [/^\/ui\/runs\/(?<id>[^/]+)$/, () => import('./pages/run.js')],
  [/^\/ui\/requests\/(?<id>[^/]+)$/, () => import('./pages/request.js')],
  [/^\/ui\/promises\/?$/, () => import('./pages/promises.js')],
  [/^\/ui\/promises\/(?<name>[^/]+)$/, () => import('./pages/promise.js')],
  [/^\/ui\/events\/?$/, () => import('./pages/events.js')],
  [/^\/ui\/dead-letters\/?$/, () => import('./pages/dead-letters.js')],
  [/^\/ui\/schedules\/?$/, () => import('./pages/schedules.js')],
  [/^\/ui\/schedules\/(?<name>[^/]+)$/, () => import('./pages/schedule.js')],
];

const main = document.getElementById('main');
let leave = null;

/** Renders the page of the current URL. */
async function route() {
  leave?.abort();
  const controller = new AbortController();
  leave = controller;
  const path = location.pathname;
  const match = ROUTES.map(([re, load]) => [path.match(re), load]).find(([m]) => m);
  const section = path.split('/')[2] || 'runs';
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (!match) {
    mount(main, h('h1', { text: 'Not found' }), h('p', {}, 'No console page at ', h('code', { text: path }), '.'));
    return;
  }
  const [m, load] = match;
  const params = Object.fromEntries(
    Object.entries(m.groups || {}).map(([k, v]) => [k, decodeURIComponent(v)]),
  );
  const ctx = {
    main,
    params,
    query: new URLSearchParams(location.search),
    signal: controller.signal,
    navigate,
    /** Puts `values` in the URL's query (empty ones removed) without a reload. */
    setQuery(values, { push = false } = {}) {
      const q = new URLSearchParams(location.search);
      for (const [k, v] of Object.entries(values)) {
        if (v === undefined || v === null || v === '') q.delete(k);
        else q.set(k, v);
      }
      const qs = q.toString();
      const url = `${location.pathname}${qs ? `?${qs}` : ''}`;
      history[push ? 'pushState' : 'replaceState'](null, '', url);
      ctx.query = q;
    },
  };
  mount(main, h('p', { class: 'muted', text: 'Loading…' }));
  try {
    const page = await load();
    if (controller.signal.aborted) return;
    await page.default(ctx);
  } catch (error) {
    if (controller.signal.aborted || error?.name === 'AbortError') return;
    if (error instanceof api.ApiError && error.status === 401) return; // the prompt is up
    console.error(error);
    mount(main, errorBox(error, 'show this page'));
  }
}

/** Goes to `href` inside the console. */
export function navigate(href, { replace = false } = {}) {
  history[replace ? 'replaceState' : 'pushState'](null, '', href);
  route();
}

// Links inside the console change the page without a reload.
document.addEventListener('click', (event) => {
  const a = event.target.closest('a[href]');
  if (!a || a.target || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith('/ui')) return;
  event.preventDefault();
  navigate(url.pathname + url.search + url.hash);
});
window.addEventListener('popstate', route);

// The token prompt: shown on the first 401, once at a time.
let prompting = false;
api.whenUnauthorized((error) => {
  if (prompting) return;
  prompting = true;
  const input = h('input', {
    type: 'password',
    id: 'token-input',
    autocomplete: 'off',
    required: true,
    placeholder: 'fulfil_…',
  });
  const form = h(
    'form',
    { class: 'token-form' },
    h('h1', { text: 'Sign in' }),
    h('p', {}, error.problem?.detail || 'This Fulfil needs a token.'),
    h('p', { class: 'muted' }, 'Paste an API token (', h('code', { text: 'fulfil token create' }), '). It is kept for this browser tab only.'),
    h('label', { for: 'token-input', text: 'Token' }),
    input,
    h('button', { type: 'submit', class: 'primary', text: 'Sign in' }),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    api.setToken(input.value.trim());
    prompting = false;
    showIdentity();
    route();
  });
  mount(main, form);
  input.focus();
});

function showIdentity() {
  const signedIn = Boolean(api.token());
  document.getElementById('signout').hidden = !signedIn;
  document.getElementById('who').textContent = signedIn ? 'token set' : '';
}

document.getElementById('signout').addEventListener('click', () => {
  api.setToken(null);
  showIdentity();
  route();
});

// Theme: the system's unless chosen; the choice is remembered.
const THEME_KEY = 'fulfil.theme';
function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  document.getElementById('theme').textContent = theme === 'dark' ? 'Light theme' : 'Dark theme';
}
applyTheme(
  localStorage.getItem(THEME_KEY) ||
    (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'),
);
document.getElementById('theme').addEventListener('click', () => {
  const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
});

showIdentity();
route();
