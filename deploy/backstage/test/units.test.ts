/** The action's pure parts: no server needed. */

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
