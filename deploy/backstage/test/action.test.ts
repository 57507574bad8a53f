/**
 * `fulfil:request:create` with the scaffolder's own test utilities
 * (createMockActionContext, mockServices) against a real Fulfil (see
 * harness.ts): filing, progress in the task log, outputs, failure, cancel,
 * a retried task filing once, and a stream cut mid-run.
 */

import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

import { mockServices } from '@backstage/backend-test-utils';
import { createMockActionContext } from '@backstage/plugin-scaffolder-node-test-utils';

import { createFulfilRequestAction } from '../src/action';
import { describeEvent } from '../src/describe';
import { idempotencyKey } from '../src/idempotency';
import { FIXTURES, Fulfil, sleep } from './harness';

let fulfil: Fulfil;

beforeAll(async () => {
  fulfil = await new Fulfil().start();
  for (const name of ['bs-provision', 'bs-broken', 'bs-slow', 'bs-nap']) {
    await fulfil.apply(path.join(FIXTURES, `${name}.yaml`));
  }
}, 120_000);

afterAll(async () => {
  const panics = fulfil?.panics() ?? [];
  await fulfil?.stop();
  expect(panics).toEqual([]);
}, 60_000);

/** The action as a backend would make it: URL and token from the app config. */
function action() {
  const config = mockServices.rootConfig({ data: { fulfil: { baseUrl: fulfil.base, token: fulfil.token } } });
  return createFulfilRequestAction({ config, cancelWaitMs: 30_000 });
}

let tasks = 0;

/** A mock context for one step of one task, and the task log it writes. */
function step(input: Record<string, unknown>, opts: { taskId?: string; stepId?: string; signal?: AbortSignal } = {}) {
  const logger = mockServices.logger.mock();
  const ctx = createMockActionContext({
    input: input as any,
    logger,
    task: { id: opts.taskId ?? `task-${process.pid}-${++tasks}-${Date.now()}` },
    // The action writes no files; without a path each context makes a
    // temporary directory of its own.
    workspacePath: os.tmpdir(),
  });
  // createMockActionContext takes no step or signal (0.3.14): set as the
  // scaffolder's runner sets them.
  Object.assign(ctx, { step: { id: opts.stepId ?? 'file', name: 'File with Fulfil' }, signal: opts.signal });
  const infoLines = () => (logger.info as jest.Mock).mock.calls.map((call) => String(call[0]));
  const warnLines = () => (logger.warn as jest.Mock).mock.calls.map((call) => String(call[0]));
  const outputs = () => Object.fromEntries((ctx.output as jest.Mock).mock.calls.map(([k, v]) => [k, v]));
  return { ctx, infoLines, warnLines, outputs };
}

/** The log lines the action should have written for the run's history, in order. */
async function historyLines(runId: string): Promise<string[]> {
  const history = await fulfil.api('GET', `/v1/runs/${runId}/history?limit=500`);
  return history.items.map(describeEvent);
}

test('files a request, streams its progress into the task log and returns the run outputs', async () => {
  const s = step({ promise: 'bs-provision', params: { name: 'orders', replicas: 2 } });
  await action().handler(s.ctx as any);

  const out = s.outputs();
  expect(out.status).toBe('succeeded');
  expect(out.replayed).toBe(false);
  expect(out.outputs).toEqual({ endpoint: 'orders.svc.internal', size: 'small' });
  expect(out.runUrl).toBe(`${fulfil.base}/ui/runs/${out.runId}`);
  const request = await fulfil.api('GET', `/v1/requests/${out.requestId}`);
  expect(request.run_id).toBe(out.runId);
  expect(request.params).toEqual({ name: 'orders', replicas: 2, size: 'small' });
  expect(request.idempotency_key).toBe(idempotencyKey(s.ctx.task.id, 'file'));

  // One line per history event, each once, in order, between the filing
  // lines and the closing one.
  const expected = await historyLines(out.runId);
  const lines = s.infoLines();
  expect(lines[0]).toBe(`filed request ${out.requestId} against Promise bs-provision; run ${out.runId}`);
  expect(lines.slice(2, 2 + expected.length)).toEqual(expected);
  expect(lines.at(-1)).toBe(`run ${out.runId} succeeded`);
  expect(lines.length).toBe(expected.length + 3);
  for (const want of [
    'request accepted for Promise bs-provision 1.0.0',
    'run started',
    'step provision: succeeded (attempt 1)',
    'step configure: succeeded (attempt 1)',
    'run succeeded',
  ]) {
    expect(lines).toContain(want);
  }
  expect(lines).toContain('step provision: dispatched to a worker (attempt 1)');
  expect(s.warnLines()).toEqual([]);
});

test('a retried task files nothing twice: the same task step gets its first request back', async () => {
  const taskId = `retried-${Date.now()}`;
  const input = { promise: 'bs-provision', params: { name: 'retried-db' } };
  const first = step(input, { taskId, stepId: 'database' });
  await action().handler(first.ctx as any);
  const again = step(input, { taskId, stepId: 'database' });
  await action().handler(again.ctx as any);

  expect(again.outputs().replayed).toBe(true);
  expect(again.outputs().requestId).toBe(first.outputs().requestId);
  expect(again.outputs().runId).toBe(first.outputs().runId);
  expect(again.outputs().status).toBe('succeeded');
  expect(again.outputs().outputs).toEqual(first.outputs().outputs);
  expect(again.infoLines()[0]).toMatch(/was filed before by this task step/);
  // The finished run's history is replayed into the second log too.
  expect(again.infoLines()).toContain('run succeeded');

  // Another step of the same task files its own request.
  const other = step(input, { taskId, stepId: 'replica' });
  await action().handler(other.ctx as any);
  expect(other.outputs().requestId).not.toBe(first.outputs().requestId);

  const listed = await fulfil.api('GET', '/v1/requests?promise=bs-provision&limit=500');
  const mine = listed.items.filter((r: any) => r.idempotency_key?.startsWith(`backstage:${taskId}:`));
  expect(mine.map((r: any) => r.idempotency_key).sort()).toEqual([
    `backstage:${taskId}:database`,
    `backstage:${taskId}:replica`,
  ]);

  // The same step with other parameters is refused, naming the first request.
  const changed = step({ promise: 'bs-provision', params: { name: 'other-db' } }, { taskId, stepId: 'database' });
  await expect(action().handler(changed.ctx as any)).rejects.toThrow(
    new RegExp(`filed request ${first.outputs().requestId} before with other parameters`),
  );
});

test('a run that fails fails the step with the run error and the failing step', async () => {
  const s = step({ promise: 'bs-broken', params: { name: 'broken' } });
  const error: Error = await action()
    .handler(s.ctx as any)
    .then(() => {
      throw new Error('the action succeeded');
    })
    .catch((e) => e);
  const out = s.outputs();
  const run = await fulfil.api('GET', `/v1/runs/${out.runId}`);
  expect(run.status).toBe('compensated');
  expect(out.status).toBe('compensated');
  expect(error.message).toContain(`Fulfil run ${out.runId} compensated`);
  expect(error.message).toContain(run.error);
  expect(error.message).toContain('provision');
  expect(error.message).toContain(out.runUrl);
  const lines = s.infoLines();
  expect(lines.some((l) => l.startsWith('step provision: failed (attempt 1): '))).toBe(true);
  expect(lines).toContain('step reserve: compensated');
  expect(lines.at(-1)).toMatch(/^run compensated/);
  expect(lines.slice(2)).toEqual(await historyLines(out.runId));
});

test('cancelling the task cancels the run', async () => {
  const abort = new AbortController();
  const s = step({ promise: 'bs-slow', params: { name: 'slow' } }, { signal: abort.signal });
  const handling = action()
    .handler(s.ctx as any)
    .then(
      () => null,
      (e: Error) => e,
    );
  let runId: string | undefined;
  for (let i = 0; i < 100 && !runId; i++) {
    runId = s.outputs().runId;
    if (!runId) await sleep(100);
  }
  expect(runId).toBeDefined();
  await fulfil.runUntil(
    runId as string,
    (run) => run.steps?.find((x: any) => x.id === 'nap')?.status === 'waiting',
    'the nap step waiting',
  );
  abort.abort();
  const error = await handling;
  expect(error).toBeInstanceOf(Error);
  expect((error as Error).message).toBe(`the task was cancelled; Fulfil run ${runId} is cancelled`);

  const run = await fulfil.api('GET', `/v1/runs/${runId}`);
  expect(run.status).toBe('cancelled');
  expect(run.steps.find((x: any) => x.id === 'finish').status).not.toBe('succeeded');
  const history = await fulfil.api('GET', `/v1/runs/${runId}/history?limit=500`);
  const requested = history.items.find((e: any) => e.type === 'run.cancel_requested');
  expect(requested).toBeDefined();
  expect(JSON.stringify(requested.data)).toContain(`Backstage scaffolder task ${s.ctx.task.id} was cancelled`);
  expect(s.outputs().status).toBe('cancelled');
  expect(s.infoLines()).toContain(`the task was cancelled: cancelling Fulfil run ${runId}`);
  // It followed the run until the abort: the wait was in the log.
  expect(s.infoLines().some((l) => l.startsWith('step nap: waiting for'))).toBe(true);
});

test('wait: false returns once filed; a timeout stops waiting but leaves the run going', async () => {
  const filed = step({ promise: 'bs-slow', params: { name: 'unwaited' }, wait: false });
  await action().handler(filed.ctx as any);
  expect(filed.outputs().requestId).toBeDefined();
  expect(['pending', 'running']).toContain(filed.outputs().status);
  expect(filed.infoLines().some((l) => l.startsWith('step '))).toBe(false);

  const impatient = step({ promise: 'bs-slow', params: { name: 'impatient' }, timeoutMinutes: 0.05 });
  const started = Date.now();
  await expect(action().handler(impatient.ctx as any)).rejects.toThrow(
    /is still running after 0\.05 minute\(s\); this step stopped waiting, the run goes on/,
  );
  expect(Date.now() - started).toBeLessThan(15_000);
  const run = await fulfil.api('GET', `/v1/runs/${impatient.outputs().runId}`);
  expect(run.status).toBe('running');
  // What it saw before the deadline is in the log.
  expect(impatient.infoLines().some((l) => l.startsWith('step nap: waiting for time to pass until '))).toBe(true);
  for (const id of [filed.outputs().runId, impatient.outputs().runId]) {
    await fulfil.api('POST', `/v1/runs/${id}/cancel`, { body: { compensate: false } });
  }
});

test('a stream cut mid-run is resumed from the last event: every event logged once', async () => {
  // A proxy in front of Fulfil that cuts the first event stream after its
  // first bytes; everything else passes through.
  let cut = 0;
  const upstream = new URL(fulfil.base);
  const proxy = http.createServer((req, res) => {
    const forward = http.request(
      { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        const isStream = /\/events$/.test(new URL(req.url ?? '/', 'http://x').pathname);
        if (isStream && cut === 0) {
          cut += 1;
          answer.once('data', (chunk) => {
            res.write(chunk);
            setTimeout(() => {
              res.socket?.destroy();
              answer.destroy();
            }, 200);
          });
          return;
        }
        answer.pipe(res);
      },
    );
    forward.on('error', () => res.destroy());
    req.pipe(forward);
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', () => r()));
  try {
    const port = (proxy.address() as { port: number }).port;
    const s = step({ promise: 'bs-nap', params: { name: 'napper' }, fulfilUrl: `http://127.0.0.1:${port}` });
    await action().handler(s.ctx as any);
    expect(cut).toBe(1);
    const out = s.outputs();
    expect(out.status).toBe('succeeded');
    expect(out.outputs).toEqual({ name: 'napper' });
    expect(s.warnLines().length).toBeGreaterThanOrEqual(1);
    expect(s.warnLines()[0]).toMatch(/event stream dropped .*; reconnecting \(1\)/);
    const lines = s.infoLines();
    expect(lines.slice(2, -1)).toEqual(await historyLines(out.runId));
  } finally {
    await new Promise((r) => proxy.close(r));
  }
});

test('bad input is refused before anything is filed', async () => {
  const noUrl = createFulfilRequestAction({ config: mockServices.rootConfig({ data: {} }) });
  const saved = process.env.FULFIL_API_URL;
  delete process.env.FULFIL_API_URL;
  try {
    await expect(noUrl.handler(step({ promise: 'bs-provision', params: { name: 'x' } }).ctx as any)).rejects.toThrow(
      /no Fulfil URL/,
    );
  } finally {
    if (saved !== undefined) process.env.FULFIL_API_URL = saved;
  }
  // Parameters the Promise's schema refuses: Fulfil's problem, with the pointer.
  await expect(action().handler(step({ promise: 'bs-provision', params: { name: 'NO' } }).ctx as any)).rejects.toThrow(
    /422.*\n\s+- \/params\/name/s,
  );
  await expect(action().handler(step({ promise: 'no-such-promise', params: {} }).ctx as any)).rejects.toThrow(/404/);
  // A wrong token is a 401 that says how to give one.
  const wrongToken = createFulfilRequestAction({ baseUrl: fulfil.base, token: 'fulfil_wrong' });
  await expect(wrongToken.handler(step({ promise: 'bs-provision', params: { name: 'abc' } }).ctx as any)).rejects.toThrow(
    /401[\s\S]*FULFIL_TOKEN/,
  );
});
