/**
 * One readable line per history event, for the scaffolder's task log.
 * Known event types get a sentence; any other type (Fulfil adds kinds
 * freely) still gets a line with its type and step, never nothing.
 */

import { HistoryEvent } from './client';

export function describeEvent(event: HistoryEvent): string {
  const d = event.data ?? {};
  const step = event.step ? `step ${event.step}` : '';
  const attempt = event.attempt ? ` (attempt ${event.attempt})` : '';
  // Failures carry `error` (a string or `{code, message}`), or are
  // `{code, message}` themselves.
  const error = errorText(d.error ?? d.reason ?? (typeof d.message === 'string' ? d : undefined));
  switch (event.type) {
    case 'request.accepted':
      return `request accepted for Promise ${d.promise ?? '?'}${d.promise_version ? ` ${d.promise_version}` : ''}`;
    case 'run.started':
      return 'run started';
    case 'step.dispatched':
      return `${step}: dispatched to a worker${attempt}`;
    case 'step.started':
      return `${step}: started${attempt}${d.worker ? ` on ${d.worker}` : ''}`;
    case 'step.succeeded':
      return `${step}: succeeded${attempt}`;
    case 'step.failed':
      return `${step}: failed${attempt}${error ? `: ${error}` : ''}`;
    case 'step.retry_scheduled':
      return `${step}: attempt ${event.attempt ?? '?'} failed${error ? ` (${error})` : ''}; retrying${
        d.fire_at ? ` at ${d.fire_at}` : ''
      }`;
    case 'step.timed_out':
      return `${step}: timed out${attempt}`;
    case 'step.skipped':
      return `${step}: skipped${d.reason ? ` (${errorText(d.reason)})` : ''}`;
    case 'step.cancelled':
      return `${step}: cancelled`;
    case 'step.waiting':
      return `${step}: waiting for ${waitingFor(d)}`;
    case 'wait.matched':
      return `${step}: the event it waited for arrived${d.event?.type ? ` (${d.event.type})` : ''}`;
    case 'approval.decided':
      return `${step}: ${d.decision ?? 'decided'} by ${d.by ?? event.actor ?? '?'}${d.comment ? `: ${d.comment}` : ''}`;
    case 'compensation.dispatched':
    case 'compensation.started':
      return `${step}: compensating${attempt}`;
    case 'compensation.succeeded':
      return `${step}: compensated`;
    case 'compensation.failed':
      return `${step}: compensation failed${error ? `: ${error}` : ''}`;
    case 'run.compensating':
      return `run compensating${error ? ` after: ${error}` : ''}`;
    case 'run.cancel_requested':
      return `cancel requested by ${event.actor ?? '?'}${d.reason ? `: ${d.reason}` : ''}`;
    case 'run.succeeded':
      return 'run succeeded';
    case 'run.failed':
      return `run failed${error ? `: ${error}` : ''}`;
    case 'run.compensated':
      return `run compensated${error ? `: ${error}` : ''}`;
    case 'run.cancelled':
      return 'run cancelled';
    default:
      return `${event.type}${event.step ? ` ${event.step}` : ''}${attempt}${error ? `: ${error}` : ''}`;
  }
}

function waitingFor(d: any): string {
  const w = d.waiting_for ?? d;
  const until = w.until ? ` until ${w.until}` : '';
  switch (w.kind) {
    case 'approval':
      return `approval${Array.isArray(w.approvers) ? ` by ${w.approvers.join(', ')}` : ''}${
        w.message ? ` ("${w.message}")` : ''
      }${until}`;
    case 'event':
      return `an event${w.type ? ` of type ${w.type}` : ''}${until}`;
    case 'sleep':
      return `time to pass${until}`;
    default:
      return `${w.kind ?? 'something'}${until}`;
  }
}

/** An error as Fulfil records it: a string, or `{code, message}`. */
export function errorText(error: unknown): string {
  if (error === undefined || error === null) return '';
  if (typeof error === 'string') return error;
  const e = error as { code?: string; message?: string };
  if (e.message) return e.code ? `${e.code}: ${e.message}` : e.message;
  return JSON.stringify(error);
}
