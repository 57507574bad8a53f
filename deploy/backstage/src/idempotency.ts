import { createHash } from 'node:crypto';

/** Fulfil's limit on an idempotency key, in bytes. */
export const MAX_KEY_BYTES = 255;

/**
 * The idempotency key of the request a scaffolder step files: the same for
 * every execution of the same step of the same task (a retried task, or
 * one the scaffolder recovered after a restart), so Fulfil answers the
 * second filing with the first request instead of filing another. An
 * `each:` loop runs the step once per item; the item is part of the key.
 * Keys that would pass Fulfil's length limit keep the task id readable and
 * hash the rest.
 */
export function idempotencyKey(taskId: string, stepId: string | undefined, each?: unknown): string {
  let rest = stepId ?? '-';
  if (each !== undefined && each !== null) rest += `:each:${digest(JSON.stringify(each)).slice(0, 16)}`;
  const key = `backstage:${taskId}:${rest}`;
  if (Buffer.byteLength(key) <= MAX_KEY_BYTES) return key;
  const hashed = `backstage:${taskId}:sha256:${digest(rest)}`;
  return Buffer.byteLength(hashed) <= MAX_KEY_BYTES ? hashed : `backstage:sha256:${digest(`${taskId}:${rest}`)}`;
}

function digest(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
