/** The action's pure parts and its module's registration: no Fulfil needed. */

import { mockServices, startTestBackend } from '@backstage/backend-test-utils';
import { scaffolderActionsExtensionPoint } from '@backstage/plugin-scaffolder-node';

import fulfilScaffolderModule from '../src';
import { describeEvent } from '../src/describe';
import { MAX_KEY_BYTES, idempotencyKey } from '../src/idempotency';
import { SseEvent, SseParser } from '../src/sse';

test('SSE events split anywhere parse whole; comments and CRLF are handled', () => {
  const wire = Buffer.from(': keep-alive\r\nid: 3\r\nevent: run.started\r\ndata: {"a":\r\ndata: 1}\r\n\r\nid:4\ndata: é\n\n');
  for (let split = 0; split <= wire.length; split++) {
    const parser = new SseParser();
    const events: SseEvent[] = [...parser.push(wire.subarray(0, split)), ...parser.push(wire.subarray(split))];
    expect(events).toEqual([
      { id: '3', event: 'run.started', data: '{"a":\n1}' },
      { id: '4', data: 'é' },
    ]);
  }
});

test('idempotency keys are stable per task step and item, and within the limit', () => {
  expect(idempotencyKey('t1', 'db')).toBe('backstage:t1:db');
  expect(idempotencyKey('t1', 'db')).toBe(idempotencyKey('t1', 'db'));
  expect(idempotencyKey('t1', 'db')).not.toBe(idempotencyKey('t1', 'cache'));
  expect(idempotencyKey('t1', 'db')).not.toBe(idempotencyKey('t2', 'db'));
  const a = idempotencyKey('t1', 'db', { key: '0', value: 'eu' });
  expect(a).toBe(idempotencyKey('t1', 'db', { key: '0', value: 'eu' }));
  expect(a).not.toBe(idempotencyKey('t1', 'db', { key: '1', value: 'us' }));
  expect(idempotencyKey('t1', undefined)).toBe('backstage:t1:-');
  const long = idempotencyKey('0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d', 'x'.repeat(400));
  expect(Buffer.byteLength(long)).toBeLessThanOrEqual(MAX_KEY_BYTES);
  expect(long.startsWith('backstage:0193a1c2-7b3e-7c1a-9f00-3d2e1a4b5c6d:sha256:')).toBe(true);
  expect(Buffer.byteLength(idempotencyKey('t'.repeat(300), 'db'))).toBeLessThanOrEqual(MAX_KEY_BYTES);
});

test('every history event gets a line, known or not', () => {
  expect(describeEvent({ seq: 1, type: 'step.failed', step: 'p', attempt: 2, data: { error: { code: 'http_connect', message: 'refused' } } })).toBe(
    'step p: failed (attempt 2): http_connect: refused',
  );
  expect(describeEvent({ seq: 2, type: 'something.new', step: 'p', data: {} })).toBe('something.new p');
  expect(
    describeEvent({
      seq: 4,
      type: 'step.waiting',
      step: 'approve',
      data: { waiting_for: { kind: 'approval', approvers: ['team:dba'], quorum: 1, message: 'Large DB orders', until: '2026-12-05T00:00:00Z' } },
    }),
  ).toBe('step approve: waiting for approval by team:dba ("Large DB orders") until 2026-12-05T00:00:00Z');
  expect(describeEvent({ seq: 5, type: 'step.waiting', step: 'nap', data: { waiting_for: { kind: 'sleep', until: '2026-12-05T00:00:00Z' } } })).toBe(
    'step nap: waiting for time to pass until 2026-12-05T00:00:00Z',
  );
  expect(describeEvent({ seq: 3, type: 'run.failed', data: { error: 'step p failed' } })).toBe('run failed: step p failed');
});

test('the backend module registers fulfil:request:create with the scaffolder', async () => {
  const addActions = jest.fn();
  const backend = await startTestBackend({
    extensionPoints: [[scaffolderActionsExtensionPoint, { addActions }]],
    features: [
      fulfilScaffolderModule,
      mockServices.rootConfig.factory({ data: { fulfil: { baseUrl: 'http://127.0.0.1:9', token: 't' } } }),
    ],
  });
  try {
    const actions = addActions.mock.calls.flat();
    expect(actions.map((a: { id: string }) => a.id)).toEqual(['fulfil:request:create']);
    // The input schema is the zod one, turned into JSON Schema for the scaffolder.
    expect(actions[0].schema.input.required).toEqual(['promise']);
    expect(Object.keys(actions[0].schema.input.properties).sort()).toEqual(
      ['fulfilUrl', 'params', 'promise', 'timeoutMinutes', 'token', 'wait'].sort(),
    );
  } finally {
    await backend.stop();
  }
});
