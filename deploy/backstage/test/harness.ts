/**
 * A real Fulfil for the tests: this repository's `fulfil serve` (API,
 * engine and worker in one process, tokens on, FULFIL_BOOTSTRAP_TOKEN the
 * admin) on free loopback ports, over a database of its own
 * (`fulfil_backstage_<random>`, created and dropped here) and a random
 * NATS prefix whose streams are deleted at the end. The approach of
 * console/e2e/run.mjs, for jest.
 *
 * Environment: FULFIL_BIN (required; `cargo build -p fulfil`),
 * DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres),
 * NATS_URL (default nats://127.0.0.1:4222), BACKSTAGE_TEST_ARTIFACTS
 * (where fulfil's log goes; default target/backstage-tests).
 */

import { ChildProcess, execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '../../..');
export const FIXTURES = path.join(__dirname, 'fixtures');
const DATABASE_URL = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres';
const NATS_URL = process.env.NATS_URL || 'nats://127.0.0.1:4222';
const ARTIFACTS = path.resolve(process.env.BACKSTAGE_TEST_ARTIFACTS || path.join(ROOT, 'target/backstage-tests'));
const READY_MS = 60_000;
const STOP_MS = 10_000;

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function fulfilBin(): string {
  const bin = process.env.FULFIL_BIN;
  if (!bin) throw new Error('set FULFIL_BIN to a built fulfil binary (cargo build -p fulfil; target/debug/fulfil)');
  if (!fs.existsSync(bin)) throw new Error(`FULFIL_BIN ${bin} does not exist: cargo build -p fulfil`);
  return bin;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

export function run(
  cmd: string,
  args: string[],
  { timeout = 30_000, env }: { timeout?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout, env: env ?? process.env }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${cmd} ${args.join(' ')}: ${stderr || error.message}`.trim()));
      else resolve(stdout);
    });
  });
}

const psql = (sql: string) => run('psql', [DATABASE_URL, '-qAt', '-v', 'ON_ERROR_STOP=1', '-c', sql]);

export class Fulfil {
  readonly suffix = crypto.randomBytes(5).toString('hex');
  readonly database = `fulfil_backstage_${this.suffix}`;
  readonly prefix = `bs${this.suffix}`;
  readonly token = `fulfil_bs_${crypto.randomBytes(24).toString('base64url')}`;
  readonly logPath = path.join(ARTIFACTS, `fulfil-${this.suffix}.log`);
  base = '';
  private child: ChildProcess | null = null;
  private exited: { code: number | null; signal: string | null } | null = null;
  private databaseCreated = false;

  async start(): Promise<this> {
    const bin = fulfilBin();
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await psql(`CREATE DATABASE "${this.database}"`);
    this.databaseCreated = true;
    const port = await freePort();
    let grpcPort = await freePort();
    while (grpcPort === port) grpcPort = await freePort();
    this.base = `http://127.0.0.1:${port}`;
    const url = new URL(DATABASE_URL);
    url.pathname = `/${this.database}`;
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const k of ['FULFIL_WORKFLOWS', 'FULFIL_TOKEN', 'FULFIL_ROLES', 'FULFIL_VARS_FILE', 'FULFIL_CONSOLE_DIR']) {
      delete env[k];
    }
    Object.assign(env, {
      DATABASE_URL: url.toString(),
      NATS_URL,
      FULFIL_NATS_PREFIX: this.prefix,
      FULFIL_HTTP_ADDR: `127.0.0.1:${port}`,
      FULFIL_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
      FULFIL_ROLES: 'api,engine,worker',
      FULFIL_AUTH: 'tokens',
      FULFIL_BOOTSTRAP_TOKEN: this.token,
      RUST_LOG: process.env.RUST_LOG || 'info',
    });
    const log = fs.createWriteStream(this.logPath);
    const child = spawn(bin, ['serve'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout?.pipe(log, { end: false });
    child.stderr?.pipe(log, { end: false });
    child.on('exit', (code, signal) => {
      this.exited = { code, signal };
      log.end();
    });
    this.child = child;
    const deadline = Date.now() + READY_MS;
    for (;;) {
      if (this.exited) {
        throw new Error(`fulfil serve exited before it was ready (${JSON.stringify(this.exited)}):\n${this.tail()}`);
      }
      try {
        const r = await fetch(`${this.base}/readyz`, { signal: AbortSignal.timeout(2000) });
        if (r.ok) return this;
      } catch {
        /* not up yet */
      }
      if (Date.now() > deadline) throw new Error(`fulfil serve was not ready within ${READY_MS / 1000} s:\n${this.tail()}`);
      await sleep(250);
    }
  }

  tail(lines = 40): string {
    try {
      // eslint-disable-next-line no-control-regex
      const text = fs.readFileSync(this.logPath, 'utf8').replace(/\x1b\[[0-9;]*m/g, '');
      return text.split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  /** Lines of fulfil's log saying it panicked. */
  panics(): string[] {
    return this.tail(1_000_000)
      .split('\n')
      .filter((l) => l.includes('panicked at'));
  }

  /** Calls the API as the bootstrap admin (or `token`); fails unless the status is expected. */
  async api(
    method: string,
    route: string,
    { body, contentType = 'application/json', expect, token }: { body?: unknown; contentType?: string; expect?: number | number[]; token?: string } = {},
  ): Promise<any> {
    const headers: Record<string, string> = { Authorization: `Bearer ${token ?? this.token}`, Accept: 'application/json' };
    let payload: string | undefined;
    if (body !== undefined) {
      headers['Content-Type'] = contentType;
      payload = typeof body === 'string' ? body : JSON.stringify(body);
    }
    const r = await fetch(`${this.base}${route}`, { method, headers, body: payload, signal: AbortSignal.timeout(30_000) });
    const text = await r.text();
    const ok = expect === undefined ? r.ok : ([] as number[]).concat(expect).includes(r.status);
    if (!ok) throw new Error(`${method} ${route} answered ${r.status}: ${text.slice(0, 600)}`);
    return text ? JSON.parse(text) : null;
  }

  /** Applies a Promise document (YAML) through the API. */
  async apply(file: string): Promise<void> {
    const text = fs.readFileSync(file, 'utf8');
    const name = text.match(/^metadata:\s*\n(?:\s+#.*\n)*\s+name:\s*([a-z0-9-]+)/m)?.[1];
    if (!name) throw new Error(`${file}: no metadata.name`);
    await this.api('PUT', `/v1/promises/${name}`, { body: text, contentType: 'application/yaml', expect: [200, 201] });
  }

  /** Polls the run until `check` holds, at most `ms`. */
  async runUntil(runId: string, check: (run: any) => boolean, what: string, ms = 30_000): Promise<any> {
    const deadline = Date.now() + ms;
    for (;;) {
      const run = await this.api('GET', `/v1/runs/${runId}`);
      if (check(run)) return run;
      if (Date.now() > deadline) throw new Error(`run ${runId}: ${what} not reached in ${ms / 1000} s (status ${run.status})`);
      await sleep(200);
    }
  }

  /** Stops fulfil, drops its database, deletes its NATS streams; bounded, never throws. */
  async stop(): Promise<void> {
    const child = this.child;
    if (child && !this.exited) {
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      if (!(await exitsWithin(gone, STOP_MS))) {
        child.kill('SIGKILL');
        await exitsWithin(gone, 5000);
      }
    }
    if (this.databaseCreated) {
      await psql(`DROP DATABASE IF EXISTS "${this.database}" WITH (FORCE)`).catch((e) =>
        console.error(`could not drop ${this.database}: ${e.message}`),
      );
    }
    if (child) {
      await deleteStreams(NATS_URL, this.prefix).catch((e) =>
        console.error(`could not delete the NATS streams of ${this.prefix}: ${e.message}`),
      );
    }
  }
}

/** Whether `gone` settles within `ms` (its timer cleared either way). */
async function exitsWithin(gone: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((r) => {
    timer = setTimeout(() => r(false), ms);
  });
  try {
    return await Promise.race([gone.then(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Deletes every JetStream stream named `<prefix>_...` with the script CI
 * uses for the same (.ci/nats-delete-streams.py speaks the NATS protocol
 * itself: the machine has no NATS client library).
 */
async function deleteStreams(natsUrl: string, prefix: string): Promise<void> {
  const u = new URL(natsUrl.replace(/^nats:/, 'http:'));
  await run('python3', [path.join(ROOT, '.ci/nats-delete-streams.py'), u.hostname, u.port || '4222', prefix]);
}
