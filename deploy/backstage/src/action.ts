/**
 * `fulfil:request:create`: files a request against a Fulfil Promise from a
 * scaffolder step, follows its run into the task log and returns its
 * outputs.
 *
 * Guarantees:
 * - Files once per task step: the idempotency key comes from the task id
 *   and the step id ({@link idempotencyKey}); a retried or recovered task
 *   gets the request (and run) it filed before, which Fulfil answers with
 *   `replayed: true`. The same step with other parameters is refused by
 *   Fulfil (409 `idempotency-conflict`) and the step fails saying so.
 * - One log line per history event of the run, each once, in order, over
 *   the SSE stream, resumed with `Last-Event-ID` after a drop (bounded).
 * - Succeeds only if the run succeeded; otherwise fails with the run's
 *   error and the failing steps.
 * - Cancelling the task cancels the run (`POST /v1/runs/{id}/cancel`,
 *   which compensates what succeeded), then waits a bounded time for it
 *   to end `cancelled`.
 * - A timeout (`timeoutMinutes`) stops waiting and fails the step; the
 *   run goes on in Fulfil.
 */

import { Config } from '@backstage/config';
import { createTemplateAction } from '@backstage/plugin-scaffolder-node';

import { FINISHED, FulfilApiError, FulfilClient, Run, sleep } from './client';
import { describeEvent } from './describe';
import { FollowAborted, FollowTimeout, followRun } from './follow';
import { idempotencyKey } from './idempotency';

export const ACTION_ID = 'fulfil:request:create';

/** How long `timeoutMinutes` defaults to. */
export const DEFAULT_TIMEOUT_MINUTES = 60;
/** The longest `timeoutMinutes` accepted (a week). */
export const MAX_TIMEOUT_MINUTES = 7 * 24 * 60;
/** After cancelling, how long the action waits for the run to end. */
export const CANCEL_WAIT_MS = 60_000;

export interface FulfilActionOptions {
  /** The API's base URL; else config `fulfil.baseUrl`, else `FULFIL_API_URL`. */
  baseUrl?: string;
  /** API token; else config `fulfil.token`, else `FULFIL_TOKEN`. */
  token?: string;
  /**
   * Where people open the console (for `runUrl`); else config
   * `fulfil.consoleUrl`, else the base URL.
   */
  consoleUrl?: string;
  /** The backend's root config, read at each invocation. */
  config?: Config;
  /** Overrides {@link CANCEL_WAIT_MS} (tests). */
  cancelWaitMs?: number;
}

const nonEmpty = (s: string | undefined | null) => (s && s.trim() ? s.trim() : undefined);

/** Creates the `fulfil:request:create` action. */
export function createFulfilRequestAction(options: FulfilActionOptions = {}) {
  return createTemplateAction({
    id: ACTION_ID,
    description:
      'Files a request against a Fulfil Promise, streams its run into the task log and returns the run outputs; ' +
      'fails with the run error, cancels the run when the task is cancelled.',
    examples: [
      {
        description: 'File a Postgres database request and wait for it',
        example: [
          'steps:',
          '  - id: database',
          '    name: Postgres database',
          `    action: ${ACTION_ID}`,
          '    input:',
          '      promise: postgres-database',
          '      params:',
          '        name: ${{ parameters.name }}',
          '        size: ${{ parameters.size }}',
        ].join('\n'),
      },
    ],
    schema: {
      input: {
        promise: (z) => z.string().min(1).describe('The Promise to file against (metadata.name)'),
        params: (z) =>
          z.record(z.unknown()).optional().describe("The request's parameters, checked against the Promise's schema"),
        fulfilUrl: (z) =>
          z
            .string()
            .url()
            .optional()
            .describe("Fulfil's API URL; default: config fulfil.baseUrl or FULFIL_API_URL"),
        token: (z) =>
          z.string().optional().describe('API token (role requester); default: config fulfil.token or FULFIL_TOKEN'),
        wait: (z) =>
          z.boolean().optional().describe('Follow the run until it ends (default true); false returns once filed'),
        timeoutMinutes: (z) =>
          z
            .number()
            .positive()
            .max(MAX_TIMEOUT_MINUTES)
            .optional()
            .describe(`How long to follow the run (default ${DEFAULT_TIMEOUT_MINUTES}); the run goes on after it`),
      },
      output: {
        requestId: (z) => z.string().describe('The Fulfil request'),
        runId: (z) => z.string().describe('Its configure run'),
        runUrl: (z) => z.string().describe("The run's page in the Fulfil console"),
        status: (z) => z.string().describe('The run status when the step ended'),
        replayed: (z) => z.boolean().describe('The request had been filed before by this task step'),
        outputs: (z) => z.record(z.unknown()).optional().describe("The run's outputs (those the Promise declares)"),
      },
    },
    async handler(ctx) {
      const config = options.config;
      const baseUrl =
        nonEmpty(ctx.input.fulfilUrl) ??
        nonEmpty(options.baseUrl) ??
        nonEmpty(config?.getOptionalString('fulfil.baseUrl')) ??
        nonEmpty(process.env.FULFIL_API_URL);
      if (!baseUrl) {
        throw new Error(
          "no Fulfil URL: set the step's input fulfilUrl, the backend config fulfil.baseUrl, or FULFIL_API_URL",
        );
      }
      const token =
        nonEmpty(ctx.input.token) ??
        nonEmpty(options.token) ??
        nonEmpty(config?.getOptionalString('fulfil.token')) ??
        nonEmpty(process.env.FULFIL_TOKEN);
      const consoleUrl = (
        nonEmpty(options.consoleUrl) ??
        nonEmpty(config?.getOptionalString('fulfil.consoleUrl')) ??
        baseUrl
      ).replace(/\/+$/, '');
      const client = new FulfilClient(baseUrl, token);
      const params = ctx.input.params ?? {};
      const wait = ctx.input.wait ?? true;
      const timeoutMinutes = ctx.input.timeoutMinutes ?? DEFAULT_TIMEOUT_MINUTES;
      const key = idempotencyKey(ctx.task.id, ctx.step?.id, ctx.each);

      if (ctx.signal?.aborted) throw new Error('the task was cancelled before the request was filed');
      let accepted;
      try {
        accepted = await client.fileRequest(ctx.input.promise, params, key);
      } catch (error) {
        if (error instanceof FulfilApiError && error.code === 'idempotency-conflict') {
          throw new Error(
            `this task step filed request ${error.problem?.request_id ?? '?'} before with other parameters ` +
              `(idempotency key ${key}); Fulfil files once per task step: start a new task to file another request`,
          );
        }
        throw error;
      }
      const runUrl = `${consoleUrl}/ui/runs/${accepted.run_id}`;
      ctx.output('requestId', accepted.request_id);
      ctx.output('runId', accepted.run_id);
      ctx.output('runUrl', runUrl);
      ctx.output('replayed', accepted.replayed);
      ctx.logger.info(
        accepted.replayed
          ? `request ${accepted.request_id} was filed before by this task step (idempotency key ${key}); following its run ${accepted.run_id}`
          : `filed request ${accepted.request_id} against Promise ${ctx.input.promise}; run ${accepted.run_id}`,
      );
      ctx.logger.info(`run in the Fulfil console: ${runUrl}`);

      if (!wait) {
        const run = await client.getRun(accepted.run_id);
        ctx.output('status', run.status);
        if (run.outputs && typeof run.outputs === 'object') ctx.output('outputs', run.outputs as Record<string, unknown>);
        return;
      }

      let run: Run;
      try {
        run = await followRun({
          client,
          runId: accepted.run_id,
          signal: ctx.signal,
          deadline: Date.now() + timeoutMinutes * 60_000,
          onEvent: (event) => ctx.logger.info(describeEvent(event)),
          onReconnect: (why, n) => ctx.logger.warn(`the run's event stream dropped (${why}); reconnecting (${n})`),
        });
      } catch (error) {
        if (error instanceof FollowAborted || ctx.signal?.aborted) {
          const status = await cancel(client, accepted.run_id, ctx, options.cancelWaitMs ?? CANCEL_WAIT_MS);
          ctx.output('status', status);
          throw new Error(`the task was cancelled; Fulfil run ${accepted.run_id} is ${status}`);
        }
        if (error instanceof FollowTimeout) {
          const status = error.run?.status ?? 'unknown';
          ctx.output('status', status);
          throw new Error(
            `Fulfil run ${accepted.run_id} is still ${status} after ${timeoutMinutes} minute(s); ` +
              `this step stopped waiting, the run goes on: ${runUrl}`,
          );
        }
        throw error;
      }
      ctx.output('status', run.status);
      if (run.outputs && typeof run.outputs === 'object') ctx.output('outputs', run.outputs as Record<string, unknown>);
      if (run.status !== 'succeeded') throw new Error(failure(run, runUrl));
      ctx.logger.info(`run ${run.id} succeeded`);
    },
  });
}

/** Cancels the run, then waits (bounded) for it to end; returns its status. */
async function cancel(
  client: FulfilClient,
  runId: string,
  ctx: { logger: { info(m: string): void; warn(m: string): void }; task: { id: string } },
  waitMs: number,
): Promise<string> {
  ctx.logger.info(`the task was cancelled: cancelling Fulfil run ${runId}`);
  try {
    const answer = await client.cancelRun(runId, `Backstage scaffolder task ${ctx.task.id} was cancelled`);
    ctx.logger.info(`run ${runId}: ${answer.status}`);
  } catch (error) {
    // A run that ended meanwhile cannot be cancelled; what it ended as is
    // read below either way.
    ctx.logger.warn(`cancelling run ${runId}: ${error instanceof Error ? error.message : error}`);
  }
  const deadline = Date.now() + waitMs;
  let status = 'unknown';
  for (let i = 0; i < 1000 && Date.now() < deadline; i++) {
    try {
      status = (await client.getRun(runId)).status;
    } catch (error) {
      ctx.logger.warn(`reading run ${runId}: ${error instanceof Error ? error.message : error}`);
    }
    if (FINISHED.has(status)) break;
    await sleep(500);
  }
  ctx.logger.info(`run ${runId} is ${status}`);
  return status;
}

/** The step's error for a run that did not succeed: its error and failing steps. */
export function failure(run: Run, runUrl: string): string {
  const failed = (run.steps ?? []).filter((s) => s.status === 'failed' && s.error);
  let message = `Fulfil run ${run.id} ${run.status}`;
  if (run.error) message += `: ${run.error}`;
  for (const step of failed) {
    if (!run.error || !run.error.includes(step.error as string)) message += `\n  step ${step.id} failed: ${step.error}`;
    else if (!run.error.includes(step.id)) message += ` (step ${step.id})`;
  }
  return `${message}\n  ${runUrl}`;
}
