#!/usr/bin/env node
// End-to-end tests of the web console: Debian's Chromium, driven by
// playwright-core, against a real `fulfil serve` (API, engine and worker in
// one process, access control on) over the real Postgres and NATS.
//
//   FULFIL_BIN=target/debug/fulfil node console/e2e/run.mjs
//
// Environment:
//   FULFIL_BIN          required: the `fulfil` binary under test
//   DATABASE_URL        a Postgres the harness may create databases in
//                       (default postgres://postgres@127.0.0.1:5432/postgres);
//                       it makes `fulfil_console_e2e_<random>` and drops it
//   NATS_URL            default nats://127.0.0.1:4222; the run's streams are
//                       under a random prefix and deleted at the end
//   E2E_ARTIFACTS       screenshots and fulfil.log (default
//                       target/console-e2e under the repository root)
//   FULFIL_CONSOLE_DIR  passed on: serve the console from this directory
//                       instead of the copy built into the binary
//   CHROMIUM            default /usr/bin/chromium (never downloaded)
//
// Each scenario is bounded in time and fails with what it waited for; a
// page error or a console error fails the scenario it happened in. One line
// per scenario is printed, then the 2,000-step run's render times. The exit
// status is 0 only if every scenario passed. Teardown (browser, server,
// database, NATS streams) always runs, bounded.

import { AsyncLocalStorage } from 'node:async_hooks';
import { spawn, execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startFakeService } from './fake-service.mjs';
import { deleteStreams } from './nats.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const FIXTURES = path.join(HERE, 'fixtures');

const FULFIL_BIN = process.env.FULFIL_BIN;
const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const NATS_URL = process.env.NATS_URL || 'nats://127.0.0.1:4222';
const ARTIFACTS = process.env.E2E_ARTIFACTS
  ? path.resolve(process.env.E2E_ARTIFACTS)
  : path.join(ROOT, 'target/console-e2e');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CONSOLE_DIR = process.env.FULFIL_CONSOLE_DIR || '';

/** Bounds. */
const READY_MS = 60_000;
const SCENARIO_MS = 60_000;
const FANOUT_MS = 120_000;
const STEP_MS = 20_000; // one wait inside a scenario
const TEARDOWN_MS = 30_000;
const FANOUT_WIDTH = 2000;

const suffix = crypto.randomBytes(5).toString('hex');
const DB_NAME = `fulfil_console_e2e_${suffix}`;
const PREFIX = `e2e${suffix}`;
const TOKEN = `fulfil_e2e_${crypto.randomBytes(24).toString('base64url')}`;

const log = (...args) => console.log('[e2e]', ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Failure extends Error {}

// A scenario that timed out may still be running in the background; the
// helpers below refuse to act for it once the next one has started.
const scenarioScope = new AsyncLocalStorage();
let currentScenario = 0;
function stillCurrent() {
  const mine = scenarioScope.getStore();
  if (mine !== undefined && mine !== currentScenario) throw new Failure('this scenario already ended');
}

/** `what` must come true within `ms`, else a Failure naming it. */
async function within(ms, what, promise) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Failure(`timed out after ${ms / 1000} s: ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- helpers

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function run(cmd, args, { timeout = 20_000, env } = {}) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout, env: env || process.env }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr || error.message}`.trim()));
      else resolve(stdout);
    });
  });
}

function databaseUrl(name) {
  const u = new URL(DATABASE_URL);
  u.pathname = `/${name}`;
  return u.toString();
}

async function psql(sql) {
  return run('psql', [DATABASE_URL, '-qAt', '-v', 'ON_ERROR_STOP=1', '-c', sql]);
}

// ----------------------------------------------------------- the server

let server = null; // {child, base, logStream}

async function startServer(fakeUrl) {
  const port = await freePort();
  let grpcPort = await freePort();
  while (grpcPort === port) grpcPort = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const env = { ...process.env };
  for (const k of ['FULFIL_WORKFLOWS', 'FULFIL_TOKEN', 'FULFIL_ROLES', 'FULFIL_VARS_FILE']) delete env[k];
  Object.assign(env, {
    DATABASE_URL: databaseUrl(DB_NAME),
    NATS_URL,
    FULFIL_NATS_PREFIX: PREFIX,
    FULFIL_HTTP_ADDR: `127.0.0.1:${port}`,
    FULFIL_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
    FULFIL_ROLES: 'api,engine,worker',
    FULFIL_AUTH: 'tokens',
    FULFIL_BOOTSTRAP_TOKEN: TOKEN,
    FULFIL_VAR_E2E_FAKE_URL: fakeUrl,
    RUST_LOG: process.env.RUST_LOG || 'info',
  });
  if (CONSOLE_DIR) env.FULFIL_CONSOLE_DIR = path.resolve(CONSOLE_DIR);
  else delete env.FULFIL_CONSOLE_DIR;
  const logStream = fs.createWriteStream(path.join(ARTIFACTS, 'fulfil.log'));
  const child = spawn(FULFIL_BIN, ['serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(logStream, { end: false });
  child.stderr.pipe(logStream, { end: false });
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));
  server = { child, base, logStream, exited: () => exited };
  const deadline = Date.now() + READY_MS;
  for (;;) {
    if (exited) throw new Failure(`fulfil serve exited before it was ready (${JSON.stringify(exited)}):\n${tailLog()}`);
    try {
      const r = await fetch(`${base}/readyz`, { signal: AbortSignal.timeout(2000) });
      if (r.ok) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Failure(`fulfil serve was not ready within ${READY_MS / 1000} s:\n${tailLog()}`);
    await sleep(250);
  }
  return base;
}

function tailLog(lines = 40) {
  try {
    // eslint-disable-next-line no-control-regex
    const text = fs.readFileSync(path.join(ARTIFACTS, 'fulfil.log'), 'utf8').replace(/\x1b\[[0-9;]*m/g, '');
    return text.split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

async function stopServer() {
  if (!server) return;
  const { child } = server;
  if (!server.exited()) {
    child.kill('SIGTERM');
    const gone = new Promise((r) => child.once('exit', r));
    const timedOut = await Promise.race([gone.then(() => false), sleep(10_000).then(() => true)]);
    if (timedOut) {
      child.kill('SIGKILL');
      await Promise.race([gone, sleep(5000)]);
    }
  }
  server.logStream.end();
}

// ---------------------------------------------------------- the API

let BASE = null;

async function apiCall(method, route, { body, contentType = 'application/json', expect } = {}) {
  stillCurrent();
  const headers = { Authorization: `Bearer ${TOKEN}`, Accept: 'application/json' };
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = contentType;
    payload = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const r = await fetch(`${BASE}${route}`, { method, headers, body: payload, signal: AbortSignal.timeout(30_000) });
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  const ok = expect ? [].concat(expect).includes(r.status) : r.ok;
  if (!ok) throw new Failure(`${method} ${route} answered ${r.status}: ${text.slice(0, 600)}`);
  return data;
}

async function applyDocument(text, file) {
  const kind = text.match(/^kind:\s*(\w+)/m)?.[1];
  const name = text.match(/^metadata:\s*\n(?:\s+#.*\n)*\s+name:\s*([a-z0-9-]+)/m)?.[1];
  if (!kind || !name) throw new Failure(`${file}: no kind or metadata.name`);
  const collection = { Promise: 'promises', Schedule: 'schedules' }[kind];
  if (!collection) throw new Failure(`${file}: kind ${kind} is not applied by the harness`);
  return apiCall('PUT', `/v1/${collection}/${name}`, { body: text, contentType: 'application/yaml' });
}

async function fileRequest(promise, params = {}) {
  return apiCall('POST', `/v1/promises/${promise}/requests`, { body: { params }, expect: 202 });
}

/** Polls the API (not the page) until `check(run)` holds. */
async function runUntil(runId, check, what, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  let last = null;
  for (;;) {
    last = await apiCall('GET', `/v1/runs/${runId}`);
    if (check(last)) return last;
    if (Date.now() > deadline) {
      throw new Failure(`run ${runId}: ${what} not reached in ${ms / 1000} s (status ${last.status}, steps ${
        (last.steps || []).map((s) => `${s.id}=${s.status}`).join(', ')})`);
    }
    await sleep(250);
  }
}

/** The 2,000-step fan-out Promise, generated: one root, N noops, a join. */
function fanoutPromise(width) {
  const ids = Array.from({ length: width }, (_, i) => `n${String(i + 1).padStart(4, '0')}`);
  const lines = [
    'apiVersion: fulfil.dev/v1',
    'kind: Promise',
    'metadata:',
    '  name: e2e-fanout',
    '  version: 1.0.0',
    '  owner: platform',
    `  description: One root, ${width} parallel noop steps and a join.`,
    'spec:',
    '  api: { type: object }',
    '  workflow:',
    '    steps:',
    '      - id: root',
    '        uses: noop',
    ...ids.flatMap((id) => [`      - id: ${id}`, '        needs: [root]', '        uses: noop']),
    '      - id: join',
    `        needs: [${ids.join(', ')}]`,
    '        uses: noop',
  ];
  return `${lines.join('\n')}\n`;
}

// --------------------------------------------------------- the browser

let browser = null;
let context = null;
let page = null;
let problems = []; // page errors and console errors of the current scenario
let allowedStatuses = []; // HTTP statuses the current scenario expects to see refused

function watchPage(p) {
  p.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  p.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    const url = msg.location()?.url || '';
    if (/favicon\.ico$/.test(url)) return;
    const status = text.match(/status of (\d{3})/)?.[1];
    if (status && allowedStatuses.includes(Number(status))) return;
    problems.push(`console error: ${text}${url ? ` (${url})` : ''}`);
  });
  p.setDefaultTimeout(STEP_MS);
  p.setDefaultNavigationTimeout(STEP_MS);
}

async function newPage() {
  if (page) await page.close().catch(() => {});
  page = await context.newPage();
  watchPage(page);
  return page;
}

const url = (p) => `${BASE}${p}`;

/** Opens a console page (a full load). */
async function goto(route) {
  stillCurrent();
  await page.goto(url(route));
}

/** Waits for `fn(arg)` to be truthy in the page, naming `what` when it is not. */
async function until(what, fn, arg, ms = STEP_MS) {
  stillCurrent();
  try {
    return await page.waitForFunction(fn, arg, { timeout: ms, polling: 100 });
  } catch (error) {
    throw new Failure(`${what}: not so within ${ms / 1000} s on ${page.url()} (${firstLine(error)})`);
  }
}

/** Waits for a locator's state, naming the hook that is missing. */
async function see(locator, what, { state = 'visible', timeout = STEP_MS } = {}) {
  stillCurrent();
  try {
    await locator.first().waitFor({ state, timeout });
  } catch (error) {
    const errors = await page.locator('.error-box').allInnerTexts().catch(() => []);
    throw new Failure(
      `${what}: not ${state} within ${timeout / 1000} s on ${page.url()}` +
        (errors.length ? `; the page shows: ${errors.join(' | ')}` : '') +
        ` (${firstLine(error)})`,
    );
  }
  return locator.first();
}

function firstLine(error) {
  return String(error?.message || error).split('\n')[0];
}

/** Fails if the page shows an error box. */
async function noErrorBox(where) {
  const errors = await page.locator('.error-box').allInnerTexts();
  if (errors.length) throw new Failure(`${where} shows an error: ${errors.join(' | ')}`);
}

async function shot(name) {
  stillCurrent();
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function setTheme(theme) {
  for (let i = 0; i < 2; i++) {
    if ((await page.evaluate(() => document.documentElement.dataset.theme)) === theme) return;
    await page.locator('#theme').click();
  }
  throw new Failure(`the theme button #theme did not switch to ${theme}`);
}

/** Screenshots in both themes, leaving the light one. */
async function shotBoth(name) {
  await setTheme('light');
  await shot(`${name}-light`);
  await setTheme('dark');
  await shot(`${name}-dark`);
  await setTheme('light');
}

async function runStatus() {
  return (await page.locator('[data-testid=run-status]').first().innerText()).trim();
}

async function waitRunStatus(status, ms = STEP_MS) {
  await see(page.locator('[data-testid=run-status]'), 'run status [data-testid=run-status]');
  await until(
    `[data-testid=run-status] says ${status}`,
    (want) => document.querySelector('[data-testid=run-status]')?.textContent.trim().toLowerCase().includes(want),
    status,
    ms,
  ).catch(async (error) => {
    throw new Failure(`${error.message}; it says ${JSON.stringify(await runStatus().catch(() => '?'))}`);
  });
}

function node(step) {
  return page.locator(`g.node[data-step="${step}"]`);
}

async function nodeStatus(step, status, ms = STEP_MS) {
  await until(
    `graph node g.node[data-step="${step}"] has data-status="${status}"`,
    ([s, want]) => document.querySelector(`g.node[data-step="${s}"]`)?.getAttribute('data-status') === want,
    [step, status],
    ms,
  );
}

/** Marks the loaded document; `sameDocument()` is false after a reload. */
async function markDocument() {
  await page.evaluate(() => {
    window.__e2eNoReload = true;
  });
}

async function assertSameDocument(what) {
  if (!(await page.evaluate(() => Boolean(window.__e2eNoReload)))) throw new Failure(`the page reloaded instead of updating live (${what})`);
}

function openDialog() {
  return page.locator('dialog[open]');
}

async function chooseIn(locator, value, what) {
  const el = await see(locator, what);
  const tag = await el.evaluate((e) => e.tagName);
  if (tag === 'SELECT') await el.selectOption(value);
  else {
    await el.fill(value);
    await el.press('Enter');
  }
}

// ------------------------------------------------------------ scenarios

const ctx = { fake: null, runs: {}, fanout: null };

async function signIn() {
  await goto('/ui/runs');
  const input = await see(page.locator('#token-input'), 'the token prompt #token-input');
  await input.fill(TOKEN);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await see(page.locator('#token-input'), 'the token prompt going away', { state: 'detached' });
  await see(page.getByLabel('Status', { exact: true }), 'the runs page (its Status filter)');
  await noErrorBox('the runs page after signing in');
  await shot('a-signed-in');
}

async function fileThroughForm() {
  await goto('/ui/promises/e2e-form?tab=request');
  const name = await see(page.locator('#field-name'), 'form input #field-name');
  await see(page.getByLabel('name', { exact: false }).first(), 'a label for #field-name');
  const labelled = await page.evaluate(() => Boolean(document.querySelector('label[for="field-name"]')));
  if (!labelled) throw new Failure('form input #field-name has no <label for="field-name">');
  await see(page.locator('#field-size'), 'form input #field-size (enum with a default)');
  await see(page.locator('#field-replicas'), 'form input #field-replicas (bounded integer)');
  // The shown choice (a select's option text; its value may be encoded).
  const sizeDefault = await page.locator('#field-size').evaluate((e) =>
    (e.tagName === 'SELECT' ? e.selectedOptions[0]?.textContent : e.value)?.trim());
  if (sizeDefault !== 'small') throw new Failure(`#field-size should show its default "small", shows ${JSON.stringify(sizeDefault)}`);

  const posts = [];
  const onRequest = (r) => {
    if (r.method() === 'POST' && r.url().includes('/v1/promises/e2e-form/requests')) posts.push(r);
  };
  page.on('request', onRequest);

  // Values the form itself refuses (pattern, bounds): errors at the fields,
  // nothing sent.
  await name.fill('X bad');
  await page.locator('#field-replicas').fill('9');
  await page.getByRole('button', { name: 'File request' }).click();
  await see(page.locator('.field-error[data-field="name"]'), 'the error at .field-error[data-field="name"] (pattern)');
  await see(page.locator('.field-error[data-field="replicas"]'), 'the error at .field-error[data-field="replicas"] (maximum 5)');
  if (posts.length) throw new Failure('values the form shows as invalid were sent to the server anyway');
  await shot('b-form-client-errors');

  // A value only the server refuses (a reserved name: the schema's `not`):
  // its 422 lands at the field.
  await name.fill('admin');
  await page.locator('#field-replicas').fill('2');
  const refused = page.waitForResponse(
    (r) => r.request().method() === 'POST' && r.url().includes('/v1/promises/e2e-form/requests'),
    { timeout: STEP_MS },
  ).catch(() => null);
  await page.getByRole('button', { name: 'File request' }).click();
  const answer = await refused;
  if (!answer) throw new Failure('clicking "File request" with name "admin" sent no POST /v1/promises/e2e-form/requests');
  if (answer.status() !== 422) throw new Failure(`name "admin": expected the server's 422, it answered ${answer.status()}`);
  const detail = (await answer.json()).errors?.find((e) => e.pointer === '/params/name')?.detail;
  await see(page.locator('.field-error[data-field="name"]'), 'the server\'s 422 error at .field-error[data-field="name"]');
  if (await page.locator('.field-error[data-field="replicas"]').count()) {
    throw new Failure('.field-error[data-field="replicas"] is still shown after replicas was corrected and the server did not name it');
  }
  const shown = await page.locator('.field-error[data-field="name"]').first().innerText();
  if (detail && !shown.includes(detail) && !/admin|not/i.test(shown)) {
    throw new Failure(`.field-error[data-field="name"] says ${JSON.stringify(shown)}, not the server's ${JSON.stringify(detail)}`);
  }
  await shot('b-form-server-errors');
  page.off('request', onRequest);

  // Valid values: filed, and the page moves to the run.
  await name.fill('e2e-live');
  await page.locator('#field-size').selectOption({ label: 'large' });
  await page.locator('#field-replicas').fill('3');
  await page.getByRole('button', { name: 'File request' }).click();
  try {
    await page.waitForURL(/\/ui\/runs\/[0-9a-f-]{36}/, { timeout: STEP_MS });
  } catch {
    const errors = await page.locator('.field-error, .error-box').allInnerTexts();
    throw new Failure(`after a valid submit the page did not go to /ui/runs/<id> (still ${page.url()}; errors: ${errors.join(' | ') || 'none'})`);
  }
  const runId = page.url().match(/\/ui\/runs\/([0-9a-f-]{36})/)[1];
  ctx.runs.form = runId;
  // Marks this document: a reload would lose it.
  await markDocument();
  await see(page.locator('[data-testid=dag]'), 'the graph [data-testid=dag]');
  const live = await until(
    'every graph node g.node[data-step] succeeded and [data-testid=run-status] says succeeded, live',
    () => {
      const nodes = [...document.querySelectorAll('g.node[data-step]')];
      if (nodes.length) window.__e2eSawUnfinished ||= nodes.some((n) => n.getAttribute('data-status') !== 'succeeded');
      const live = document.querySelector('[data-testid=live]');
      window.__e2eSawLive ||= Boolean(live && !live.hidden && live.getClientRects().length);
      const status = document.querySelector('[data-testid=run-status]')?.textContent.trim().toLowerCase() || '';
      const done = nodes.length === 3 && nodes.every((n) => n.getAttribute('data-status') === 'succeeded') && status.includes('succeeded');
      return done && {
        sawUnfinished: Boolean(window.__e2eSawUnfinished),
        sawLive: Boolean(window.__e2eSawLive),
        sameDocument: Boolean(window.__e2eNoReload),
      };
    },
    undefined,
    30_000,
  );
  const seen = await live.jsonValue();
  if (!seen.sameDocument) throw new Failure('the run page reloaded instead of updating live');
  if (!seen.sawUnfinished) throw new Failure('never saw a node that was not yet succeeded: the graph did not go green while watched');
  if (!seen.sawLive) throw new Failure('[data-testid=live] was never shown while the run was followed');
  const r = await apiCall('GET', `/v1/runs/${runId}`);
  if (r.status !== 'succeeded') throw new Failure(`the API says run ${runId} is ${r.status}`);
  const params = (await apiCall('GET', `/v1/requests/${r.request_id}`)).params;
  if (params.name !== 'e2e-live' || params.size !== 'large' || params.replicas !== 3) {
    throw new Failure(`the form filed params ${JSON.stringify(params)}, expected name e2e-live, size large, replicas 3 (a number)`);
  }
  await shot('b-run-succeeded');
}

async function retryFromFailedStep() {
  const { run_id: runId } = await fileRequest('e2e-saga', { name: 'saga-one' });
  ctx.runs.saga = runId;
  await goto(`/ui/runs/${runId}`);
  await waitRunStatus('compensated', 30_000);
  await nodeStatus('call', 'failed');
  await nodeStatus('reserve', 'compensated');
  await nodeStatus('prepare', 'succeeded');
  await shot('c-compensated');

  ctx.fake.flip();
  await markDocument();
  await (await see(node('call'), 'graph node g.node[data-step="call"]')).click();
  await see(page.locator('[data-testid=step-panel][data-step="call"]'), 'the step panel [data-testid=step-panel][data-step="call"]');
  await page.getByRole('button', { name: 'Retry from this step' }).click();
  const dialog = await see(openDialog(), 'the retry dialog (dialog[open])');
  await see(dialog.locator('[data-testid=retry-rerun] li'), 'the retry preview [data-testid=retry-rerun] li');
  const rerun = (await dialog.locator('[data-testid=retry-rerun] li').allInnerTexts()).map((t) => t.trim());
  const kept = (await dialog.locator('[data-testid=retry-kept] li').allInnerTexts()).map((t) => t.trim());
  const has = (list, id) => list.some((t) => t === id || t.startsWith(`${id} `) || t.split(/\s/).includes(id));
  if (!has(rerun, 'reserve') || !has(rerun, 'call') || has(rerun, 'prepare')) {
    throw new Failure(`[data-testid=retry-rerun] li should be reserve and call, is ${JSON.stringify(rerun)}`);
  }
  if (!has(kept, 'prepare') || kept.length !== 1) {
    throw new Failure(`[data-testid=retry-kept] li should be prepare, is ${JSON.stringify(kept)}`);
  }
  await shot('c-retry-dialog');
  await dialog.getByRole('button', { name: 'Retry', exact: true }).click();
  await see(openDialog(), 'the retry dialog closing', { state: 'detached' });
  await waitRunStatus('succeeded', 30_000);
  await nodeStatus('call', 'succeeded');
  await nodeStatus('reserve', 'succeeded');
  await assertSameDocument('retried run');
  const r = await apiCall('GET', `/v1/runs/${runId}`);
  if (r.status !== 'succeeded') throw new Failure(`the API says the retried run is ${r.status}`);
  await shot('c-retried');
}

async function approve() {
  const { run_id: runId } = await fileRequest('e2e-approval', { name: 'approve-me' });
  ctx.runs.approval = runId;
  await goto(`/ui/runs/${runId}`);
  await nodeStatus('approve', 'waiting', 30_000);
  await markDocument();
  await node('approve').first().click();
  const panel = await see(page.locator('[data-testid=step-panel][data-step="approve"]'), 'the step panel [data-testid=step-panel][data-step="approve"]');
  await until(
    'the step panel shows what the approval waits for (approvers role:admin and its message)',
    () => {
      const t = document.querySelector('[data-testid=step-panel][data-step="approve"]')?.textContent || '';
      return t.includes('role:admin') && t.includes('Go ahead with approve-me?');
    },
  ).catch(async (error) => {
    throw new Failure(`${error.message}; the panel says: ${(await panel.innerText()).slice(0, 400)}`);
  });
  for (const label of ['Reject', 'Cancel']) {
    await see(page.getByRole('button', { name: label, exact: true }), `the button ${label} on a waiting run`);
  }
  await shot('d-waiting');
  await page.getByRole('button', { name: 'Approve', exact: true }).first().click();
  const dialog = await see(openDialog(), 'the approve dialog (dialog[open])');
  const comment = await see(dialog.getByLabel('Comment'), 'the dialog\'s textarea labelled Comment');
  await comment.fill('looks right to the e2e test');
  await dialog.getByRole('button', { name: 'Approve', exact: true }).click();
  await see(openDialog(), 'the approve dialog closing', { state: 'detached' });
  await waitRunStatus('succeeded', 30_000);
  await nodeStatus('finish', 'succeeded');
  await assertSameDocument('approved run');
  await goto(`/ui/runs/${runId}?tab=history`);
  await see(page.locator('[data-testid=history] tr[data-seq]'), 'history rows [data-testid=history] tr[data-seq]');
  await until(
    'the history tab shows the approval decision with its comment',
    () =>
      [...document.querySelectorAll('[data-testid=history] tr[data-seq]')].some((tr) =>
        tr.textContent.includes('approval.decided') && tr.textContent.includes('looks right to the e2e test')),
  ).catch(async (error) => {
    const rows = await page.locator('[data-testid=history] tr[data-seq]').allInnerTexts();
    throw new Failure(`${error.message}; rows: ${rows.map((r) => r.replace(/\s+/g, ' ').slice(0, 120)).join(' / ')}`);
  });
  await shot('d-history');
}

async function replayDeadLetter() {
  const receipt = await apiCall('POST', '/v1/events', {
    contentType: 'application/cloudevents+json',
    body: { specversion: '1.0', id: `team-${suffix}`, source: '/e2e', type: 'com.example.e2e.team', data: { team: 'vision' } },
    expect: 202,
  });
  const id = receipt.dead_letter_id;
  if (!id) throw new Failure(`an event without data.lead should be a dead letter; the receipt: ${JSON.stringify(receipt)}`);
  ctx.deadLetter = id;
  // The fix: a version whose trigger gives the lead a default.
  await applyDocument(fs.readFileSync(path.join(FIXTURES, 'fixes', 'e2e-events-1.0.1.yaml'), 'utf8'), 'e2e-events-1.0.1.yaml');
  await goto('/ui/dead-letters');
  const row = await see(page.locator(`tr[data-dead-letter-id="${id}"]`), `the dead letter's row tr[data-dead-letter-id="${id}"]`);
  await shot('e-dead-letters');
  await row.getByRole('button', { name: 'Replay', exact: true }).click();
  const dialog = await see(openDialog(), 'the replay dialog (dialog[open])');
  await dialog.getByRole('button', { name: 'Replay', exact: true }).click();
  await see(openDialog(), 'the replay dialog closing', { state: 'detached' });
  await until(
    'the outcome of the replay ("filed") is shown',
    (dl) =>
      /\bfiled\b/.test(document.querySelector(`tr[data-dead-letter-id="${dl}"]`)?.textContent || '') ||
      /\bfiled\b/.test(document.getElementById('toasts')?.textContent || '') ||
      /\bfiled\b/.test(document.querySelector('dialog[open]')?.textContent || ''),
    id,
  );
  await shot('e-replayed');
  const list = await apiCall('GET', '/v1/dead-letters');
  const dl = list.items.find((d) => d.id === id);
  if (!dl || dl.replays !== 1) throw new Failure(`the API says dead letter ${id} was replayed ${dl?.replays} times, not once`);
}

async function filterRuns() {
  // Two more saga runs that fail whatever the fake service's state.
  const { run_id: failing } = await fileRequest('e2e-saga', { name: 'always-fail' });
  const { run_id: failing2 } = await fileRequest('e2e-saga', { name: 'always-fail' });
  await runUntil(failing, (r) => r.status === 'compensated', 'status compensated', 30_000);
  await runUntil(failing2, (r) => r.status === 'compensated', 'status compensated', 30_000);
  await goto('/ui/runs');
  for (const label of ['Kind', 'Team', 'Waiting for', 'Since', 'Until']) {
    await see(page.getByLabel(label, { exact: true }), `the runs filter labelled ${label}`);
  }
  await chooseIn(page.getByLabel('Status', { exact: true }), 'compensated', 'the runs filter labelled Status');
  await chooseIn(page.getByLabel('Promise', { exact: true }), 'e2e-saga', 'the runs filter labelled Promise');
  await until('the URL carries status=compensated and promise=e2e-saga', () => {
    const q = new URLSearchParams(location.search);
    return q.get('status') === 'compensated' && q.get('promise') === 'e2e-saga';
  });
  // Runs that must not be listed: every other Promise's, and e2e-saga's
  // that did not end compensated (the retried one of scenario c).
  const others = (await apiCall('GET', '/v1/runs?limit=200')).items
    .filter((r) => r.promise !== 'e2e-saga' || r.status !== 'compensated')
    .map((r) => r.id);
  if (!others.length) throw new Failure('expected runs the filter should hide; found none');
  const check = async (when) => {
    await see(page.locator(`tr[data-run-id="${failing}"]`), `${when}: the compensated run's row tr[data-run-id="${failing}"]`);
    await until(
      `${when}: only rows tr[data-run-id][data-status] of compensated e2e-saga runs remain`,
      (hidden) => {
        const rows = [...document.querySelectorAll('tr[data-run-id][data-status]')];
        return rows.length > 0 &&
          rows.every((r) => r.dataset.status === 'compensated' && r.textContent.includes('e2e-saga')) &&
          !rows.some((r) => hidden.includes(r.dataset.runId));
      },
      others,
    );
  };
  await check('filtered');
  await page.reload();
  await check('after a reload of the filtered URL');
  const shown = await page.getByLabel('Status', { exact: true }).inputValue();
  if (shown !== 'compensated') throw new Failure(`after a reload the Status filter shows ${JSON.stringify(shown)}`);
  await page.getByRole('button', { name: /^Duration/ }).click();
  await until('sorting by Duration puts sort=duration into the URL', () =>
    new URLSearchParams(location.search).get('sort') === 'duration');
  const dir = await page.evaluate(() => new URLSearchParams(location.search).get('dir'));
  await page.getByRole('button', { name: /^Duration/ }).click();
  await until('clicking Duration again flips dir=', (d) => {
    const q = new URLSearchParams(location.search);
    return q.get('sort') === 'duration' && q.get('dir') && q.get('dir') !== d;
  }, dir);
  await check('sorted by duration');
  // The rows are in the order of the runs' durations, as the API has them.
  const order = await page.evaluate(() => ({
    dir: new URLSearchParams(location.search).get('dir'),
    ids: [...document.querySelectorAll('tr[data-run-id][data-status]')].map((r) => r.dataset.runId),
  }));
  const runs = (await apiCall('GET', '/v1/runs?promise=e2e-saga&status=compensated&limit=100')).items;
  const ms = new Map(runs.map((r) => [r.id, new Date(r.finished_at) - new Date(r.created_at)]));
  const durations = order.ids.map((id) => ms.get(id));
  if (order.ids.length < 2) throw new Failure(`expected at least 2 compensated e2e-saga rows to sort, found ${order.ids.length}`);
  if (new Set(durations).size === durations.length) {
    const sorted = [...durations].sort((a, b) => (order.dir === 'asc' ? a - b : b - a));
    if (durations.join() !== sorted.join()) {
      throw new Failure(`sorted by Duration (${order.dir}) the rows' durations are ${durations.join(', ')} ms`);
    }
  }
  await shot('f-filtered');
}

async function fanout() {
  const t0 = Date.now();
  await applyDocument(fanoutPromise(FANOUT_WIDTH), 'e2e-fanout (generated)');
  const { run_id: runId } = await fileRequest('e2e-fanout');
  ctx.runs.fanout = runId;
  // Instrumentation (injected by the browser's debugger protocol, not a
  // page script): the first data-render-ms and when it was set, in ms
  // since the navigation started. Live updates re-render later.
  await page.addInitScript(() => {
    const observer = new MutationObserver(() => {
      const dag = document.querySelector('[data-testid=dag][data-render-ms]');
      if (!dag || window.__e2eFirstRender) return;
      window.__e2eFirstRender = { ms: Number(dag.getAttribute('data-render-ms')), at: performance.now() };
      observer.disconnect();
    });
    observer.observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-render-ms'] });
  });
  const nav = Date.now();
  await goto(`/ui/runs/${runId}`);
  await see(page.locator('[data-testid=dag][data-render-ms]'), 'the graph [data-testid=dag] with data-render-ms', { timeout: 60_000 });
  await see(page.locator('[data-testid=dag] g.node').first(), 'the graph\'s nodes');
  const visibleMs = Date.now() - nav;
  const first = await page.evaluate(() => window.__e2eFirstRender || null);
  if (!first) throw new Failure('could not observe the first data-render-ms of [data-testid=dag]');
  const renderMs = first.ms;
  const drawnAtMs = Math.round(first.at);
  if (!Number.isFinite(renderMs)) throw new Failure('[data-testid=dag] data-render-ms is not a number');
  const group = await see(page.locator('g.node.group[data-count]'), 'a group node g.node.group[data-count] for the 2,000 parallel steps');
  const count = Number(await group.getAttribute('data-count'));
  if (count !== FANOUT_WIDTH) throw new Failure(`the group node's data-count is ${count}, not ${FANOUT_WIDTH}`);
  // Expanded (aria-expanded="true") the group lists its steps; a click
  // toggles it. Collapse first if the page opened it by itself.
  if ((await group.getAttribute('aria-expanded')) === 'true') {
    await group.click();
    await until('clicking the open group node collapses it', () =>
      document.querySelector('g.node.group[data-count]')?.getAttribute('aria-expanded') === 'false', undefined, 30_000);
  }
  const clicked = Date.now();
  await page.locator('g.node.group[data-count]').first().click();
  await until(
    'clicking the group node expands it (aria-expanded="true", its steps listed)',
    () =>
      document.querySelector('g.node.group[data-count]')?.getAttribute('aria-expanded') === 'true' &&
      document.querySelectorAll('[data-testid=dag] :not(g)[data-step]').length > 0,
    undefined,
    30_000,
  );
  const expandMs = Date.now() - clicked;
  // Still responsive while the run's statuses stream in: the list is
  // filtered to one step, which is selected and its panel shown.
  await (await see(page.locator('[data-testid=dag]').getByLabel(/filter/i), 'the expanded group\'s filter box (labelled "Filter …")')).fill('n1000');
  const item = page.locator('[data-testid=dag] button[data-step="n1000"]');
  await (await see(item, 'the listed step n1000 in the expanded group')).click();
  await see(page.locator('[data-testid=step-panel][data-step="n1000"]'), 'the step panel of n1000 after clicking it in the group');
  await shot('g-fanout');
  const r = await apiCall('GET', `/v1/runs/${runId}`);
  const succeeded = r.steps.filter((s) => s.status === 'succeeded').length;
  ctx.fanout = { renderMs, drawnAtMs, visibleMs, expandMs, count, succeeded, status: r.status, secs: (Date.now() - t0) / 1000 };
}

async function forEachSteps() {
  const regions = Array.from({ length: 40 }, (_, i) => `r${i}`);
  const { run_id: runId } = await fileRequest('e2e-for-each', { regions });
  ctx.runs.forEach = runId;
  const r = await runUntil(runId, (run) => run.status === 'succeeded', 'the for_each run succeeds', 45_000);
  const instances = r.steps.filter((s) => s.instance_of === 'deploy');
  if (instances.length !== 40) throw new Failure(`GET /v1/runs/${runId} lists ${instances.length} instances of deploy, not 40`);
  await goto(`/ui/runs/${runId}`);
  await nodeStatus('deploy', 'succeeded');
  await nodeStatus('summary', 'succeeded');
  const sub = await node('deploy').textContent();
  if (!sub.includes('40/40 instances')) throw new Failure(`the node of deploy says ${JSON.stringify(sub)}, not "40/40 instances"`);
  const group = await see(page.locator('g.node.group[data-count="40"]'), 'a group node g.node.group[data-count="40"] for the instances of deploy');
  if ((await group.getAttribute('aria-expanded')) !== 'true') await group.click();
  const item = page.locator('[data-testid=dag] button[data-step="deploy[7]"]');
  await (await see(item, 'the instance deploy[7] listed in the expanded group')).click();
  const panel = await see(page.locator('[data-testid=step-panel][data-step="deploy[7]"]'), 'the step panel of deploy[7]');
  const text = await panel.innerText();
  for (const want of ['Instance of', 'deploy', '"r7"']) {
    if (!text.includes(want)) throw new Failure(`the panel of deploy[7] does not show ${want}: ${JSON.stringify(text.slice(0, 400))}`);
  }
  await shot('i-for-each');
}

async function compoundLinks() {
  const { run_id: runId } = await fileRequest('e2e-compound', { app: 'shop' });
  const r = await runUntil(runId, (run) => run.status === 'succeeded', 'the compound run succeeds', 45_000);
  const child = (r.children || [])[0];
  if (!child) throw new Failure(`GET /v1/runs/${runId} lists no child request`);
  if (r.outputs?.endpoint !== 'shop-db.internal:5432') throw new Failure(`the run's outputs are ${JSON.stringify(r.outputs)}`);
  await goto(`/ui/runs/${runId}`);
  await nodeStatus('database', 'succeeded');
  await node('database').first().click();
  const panel = await see(page.locator('[data-testid=step-panel][data-step="database"]'), 'the step panel of database');
  const text = await panel.innerText();
  for (const want of ['Child request', `e2e-child …${child.request_id.slice(-8)}`]) {
    if (!text.includes(want)) throw new Failure(`the panel of database does not show ${want}: ${JSON.stringify(text.slice(0, 400))}`);
  }
  await shot('j-compound-parent');
  await (await see(panel.getByRole('link', { name: 'open its run' }), 'the link to the child run in the step panel')).click();
  await until('the child run page', (id) => location.pathname === `/ui/runs/${id}`, child.run_id);
  const parent = await see(page.locator('.parent-link'), 'the Parent row of the child run (.parent-link)');
  const parentText = await parent.innerText();
  if (!parentText.includes(`run …${runId.slice(-8)} step database`)) throw new Failure(`the Parent row says ${JSON.stringify(parentText)}`);
  await shot('j-compound-child');
  await (await see(parent.getByRole('link', { name: /^run / }), 'the link back to the parent run')).click();
  await until('back on the parent run page', (id) => location.pathname === `/ui/runs/${id}`, runId);
  await goto(`/ui/requests/${child.request_id}`);
  await see(page.locator('.parent-link'), 'the Parent row of the child request');
  await goto(`/ui/requests/${r.request_id}`);
  await see(page.locator(`ul.children a[href="/ui/requests/${child.request_id}"]`), 'the parent request listing its child');
}

async function everyPage() {
  const pages = [
    ['h-runs', '/ui/runs', 'tr[data-run-id]', true],
    ['h-run-graph', `/ui/runs/${ctx.runs.saga || ctx.runs.form}?tab=graph`, '[data-testid=dag] g.node[data-step]', true],
    ['h-run-timeline', `/ui/runs/${ctx.runs.saga || ctx.runs.form}?tab=timeline`, '[data-testid=timeline]', true],
    ['h-run-history', `/ui/runs/${ctx.runs.saga || ctx.runs.form}?tab=history`, '[data-testid=history] tr[data-seq]', true],
    ['h-promises', '/ui/promises', 'a[href="/ui/promises/e2e-saga"]'],
    ['h-promise-workflow', '/ui/promises/e2e-saga?tab=workflow', 'main svg, main g.node, main table'],
    ['h-promise-schema', '/ui/promises/e2e-form?tab=schema', 'main pre, main table, main dl'],
    ['h-promise-request', '/ui/promises/e2e-form?tab=request', '#field-name'],
    ['h-events', '/ui/events', 'tr[data-event-id]'],
    ['h-dead-letters', '/ui/dead-letters', 'tr[data-dead-letter-id]'],
    ['h-schedules', '/ui/schedules', 'tr[data-schedule="e2e-ticker"]'],
    ['h-schedule', '/ui/schedules/e2e-ticker', 'tr[data-tick]'],
  ];
  const missing = [];
  // The schedule page shows the ticks there were when it loaded: wait (on
  // the API) for the ticker's first, due within 20 s of applying it.
  await within(45_000, 'a first tick of e2e-ticker in GET /v1/schedules/e2e-ticker/ticks', (async () => {
    while ((await apiCall('GET', '/v1/schedules/e2e-ticker/ticks')).items.length === 0) await sleep(250);
  })());
  // The shell's navigation.
  await goto('/ui/runs');
  for (const [label, route] of [['Promises', '/ui/promises'], ['Events', '/ui/events'], ['Dead letters', '/ui/dead-letters'], ['Schedules', '/ui/schedules'], ['Runs', '/ui/runs']]) {
    await (await see(page.getByRole('navigation').getByRole('link', { name: label, exact: true }), `the nav link ${label}`)).click();
    await until(`the nav link ${label} goes to ${route}`, (r) => location.pathname === r, route);
    const current = await page.getByRole('navigation').getByRole('link', { name: label, exact: true }).getAttribute('aria-current');
    if (current !== 'page') missing.push(`nav link ${label} is not marked aria-current="page" on ${route}`);
  }
  for (const [name, route, ready, both] of pages) {
    await goto(route);
    try {
      await see(page.locator(ready), `${route}: ${ready}`, { timeout: 30_000 });
      await noErrorBox(route);
    } catch (error) {
      missing.push(error.message);
      await shot(`${name}-FAILED`).catch(() => {});
      continue;
    }
    if (both) await shotBoth(name);
    else await shot(name);
  }
  // Pause the ticker from the list, so nothing files while tearing down.
  await goto('/ui/schedules');
  const row = await see(page.locator('tr[data-schedule="e2e-ticker"]'), 'the schedule row tr[data-schedule="e2e-ticker"]');
  // The button says Pause; its accessible name may add the schedule's.
  await (await see(row.getByRole('button', { name: /^Pause\b/ }), 'the button Pause in the row of e2e-ticker')).click();
  const confirm = openDialog();
  if (await confirm.count()) await confirm.getByRole('button', { name: /^Pause\b/ }).click();
  await see(row.getByRole('button', { name: /^Resume\b/ }), 'the Resume button after pausing e2e-ticker');
  const s = await apiCall('GET', '/v1/schedules/e2e-ticker');
  if (!s.paused) throw new Failure('the API says e2e-ticker is not paused after clicking Pause');
  if (missing.length) throw new Failure(`pages not shown as expected:\n    - ${missing.join('\n    - ')}`);
}

const SCENARIOS = [
  ['a', 'sign in', signIn, { allow: [401] }],
  ['b', 'file through the generated form, DAG turns green live', fileThroughForm, { allow: [422] }],
  ['c', 'compensated run, retry from the failed step', retryFromFailedStep],
  ['d', 'approve', approve],
  ['e', 'replay a dead letter', replayDeadLetter],
  ['f', 'filter the run list', filterRuns],
  // Before g: its 2,000 tasks would queue ahead of these.
  ['i', 'a for_each step: instances grouped, item and index shown', forEachSteps],
  ['j', 'a compound Promise: parent and child linked both ways', compoundLinks],
  ['g', `${FANOUT_WIDTH.toLocaleString('en')}-step fan-out`, fanout, { ms: FANOUT_MS }],
  ['h', 'every page, both themes', everyPage, { ms: 180_000 }],
];

// ---------------------------------------------------------------- main

async function main() {
  if (!FULFIL_BIN) throw new Failure('set FULFIL_BIN to a built fulfil binary (e.g. target/debug/fulfil)');
  if (!fs.existsSync(FULFIL_BIN)) throw new Failure(`FULFIL_BIN ${FULFIL_BIN} does not exist`);
  if (!fs.existsSync(CHROMIUM)) throw new Failure(`no Chromium at ${CHROMIUM}: run \`bash .ci/console-deps\``);
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (error) {
    throw new Failure(`playwright-core is not installed in console/e2e (${firstLine(error)}): run \`bash .ci/console-deps\``);
  }
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of fs.readdirSync(ARTIFACTS)) if (f.endsWith('.png')) fs.rmSync(path.join(ARTIFACTS, f));

  log(`database ${DB_NAME}, NATS prefix ${PREFIX}, artifacts ${ARTIFACTS}, console ${CONSOLE_DIR || 'embedded'}`);
  await psql(`CREATE DATABASE "${DB_NAME}"`);
  dbCreated = true;
  ctx.fake = await startFakeService();
  BASE = await startServer(ctx.fake.url);
  log(`fulfil serve ready at ${BASE}`);
  for (const file of fs.readdirSync(FIXTURES).filter((f) => f.endsWith('.yaml')).sort()) {
    const text = fs.readFileSync(path.join(FIXTURES, file), 'utf8');
    // Promises before the Schedules that file against them.
    if (/^kind:\s*Schedule/m.test(text)) continue;
    await applyDocument(text, file);
  }
  for (const file of fs.readdirSync(FIXTURES).filter((f) => f.endsWith('.yaml')).sort()) {
    const text = fs.readFileSync(path.join(FIXTURES, file), 'utf8');
    if (/^kind:\s*Schedule/m.test(text)) await applyDocument(text, file);
  }

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Our own handlers tear everything down (Playwright's would exit first).
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-dev-shm-usage', '--disable-gpu'],
  });
  context = await browser.newContext({ viewport: { width: 1400, height: 900 }, colorScheme: 'light' });
  await newPage();

  const results = [];
  for (const [key, title, fn, opts = {}] of SCENARIOS) {
    if (interrupted) break;
    problems = [];
    allowedStatuses = opts.allow || [];
    const started = Date.now();
    let error = null;
    currentScenario += 1;
    const scenario = currentScenario;
    try {
      await within(opts.ms || SCENARIO_MS, `scenario ${key} (${title})`, scenarioScope.run(scenario, fn));
      if (problems.length) throw new Failure(`errors in the browser:\n    - ${problems.join('\n    - ')}`);
    } catch (e) {
      error = e;
      await shot(`${key}-FAILED`).catch(() => {});
    }
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    results.push({ key, title, error, secs });
    console.log(`${error ? 'FAIL' : 'ok  '} ${key}. ${title} (${secs} s)${error ? `\n    ${error instanceof Failure ? error.message : error.stack}` : ''}`);
    if (key === 'a' || error) {
      // Later pages start signed in, whatever happened here; a timed-out
      // scenario's page may still be busy, so they get a fresh one.
      await context.addInitScript((t) => sessionStorage.setItem('fulfil.token', t), TOKEN).catch(() => {});
      if (error) await newPage().catch(() => {});
    }
  }
  if (ctx.fanout) {
    const f = ctx.fanout;
    console.log(
      `${FANOUT_WIDTH}-step run: graph render ${f.renderMs} ms (first data-render-ms), drawn ${f.drawnAtMs} ms after navigation started ` +
        `(visible to the test after ${f.visibleMs} ms), ` +
        `group of ${f.count} expanded in ${f.expandMs} ms (run ${f.status}, ${f.succeeded} steps succeeded ${f.secs.toFixed(1)} s after applying)`,
    );
  } else {
    console.log(`${FANOUT_WIDTH}-step run: no render time (scenario g failed)`);
  }
  const failed = results.filter((r) => r.error);
  console.log(`${results.length - failed.length} of ${results.length} scenarios passed; screenshots and fulfil.log in ${ARTIFACTS}`);
  const panics = tailLog(100_000).split('\n').filter((l) => l.includes('panicked at'));
  if (panics.length) console.log(`FAIL fulfil serve panicked:\n    ${panics.slice(0, 5).join('\n    ')}`);
  return failed.length === 0 && panics.length === 0;
}

let dbCreated = false;
let tearingDown = null;
let interrupted = false;

/** Tears down once; every caller waits for the same teardown. */
function teardown() {
  tearingDown ||= tearDownAll();
  return tearingDown;
}

async function tearDownAll() {
  const steps = [
    ['close the browser', async () => browser && (await browser.close())],
    ['stop fulfil serve', stopServer],
    ['stop the fake service', async () => ctx.fake && (await ctx.fake.close())],
    ['drop the database', async () => dbCreated && (await psql(`DROP DATABASE IF EXISTS "${DB_NAME}" WITH (FORCE)`))],
    ['delete the NATS streams', async () => {
      if (!server) return;
      const deleted = await deleteStreams(NATS_URL, PREFIX);
      log(`deleted the NATS streams ${deleted.join(', ') || '(none)'}`);
    }],
  ];
  for (const [what, fn] of steps) {
    try {
      await within(TEARDOWN_MS, what, fn());
    } catch (error) {
      console.error(`[e2e] teardown: could not ${what}: ${firstLine(error)}`);
    }
  }
}

// A timed-out scenario's background work failing later is expected.
process.on('unhandledRejection', (error) => {
  if (process.env.E2E_VERBOSE) console.error(`[e2e] (after its scenario) ${firstLine(error)}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, async () => {
    if (interrupted) return;
    interrupted = true;
    console.error(`[e2e] ${signal}: tearing down`);
    await teardown();
    process.exit(130);
  });
}

let ok = false;
try {
  ok = await main();
} catch (error) {
  console.error(`[e2e] ${error instanceof Failure ? error.message : error.stack}`);
} finally {
  await teardown();
}
process.exit(ok ? 0 : 1);
