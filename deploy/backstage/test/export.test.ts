/**
 * `fulfil backstage export` against a real Fulfil (see harness.ts) with
 * the example Promises of workflows/ and this package's test Promises,
 * live requests (one filed by another team, one deleted), every written
 * file validated by the Backstage catalog model's own validators (the
 * default entity policies, and each kind's validator: Component, Resource
 * and Location from @backstage/catalog-model, Template from
 * @backstage/plugin-scaffolder-common).
 */

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  DefaultNamespaceEntityPolicy,
  Entity,
  EntityPolicies,
  FieldFormatEntityPolicy,
  NoForeignRootFieldsEntityPolicy,
  SchemaValidEntityPolicy,
  componentEntityV1alpha1Validator,
  locationEntityV1alpha1Validator,
  parseEntityRef,
  resourceEntityV1alpha1Validator,
  stringifyEntityRef,
} from '@backstage/catalog-model';
import { templateEntityV1beta3Validator } from '@backstage/plugin-scaffolder-common';
import YAML from 'yaml';

import { FIXTURES, Fulfil, fulfilBin, run } from './harness';

const WORKFLOWS = path.resolve(__dirname, '../../../workflows');
const HEADER = '# Written by `fulfil backstage export`: edits are overwritten.';

let fulfil: Fulfil;
let out: string;
/** The Promises applied: every example of workflows/, and bs-provision. */
const applied: string[] = ['bs-provision'];

beforeAll(async () => {
  fulfil = await new Fulfil().start();
  for (const file of fs.readdirSync(WORKFLOWS).filter((f) => f.endsWith('.yaml'))) {
    // Triggers capture NATS subjects server-wide; another test's Fulfil
    // may hold the same subject, so the examples are applied without them
    // (their request schemas, which the export reads, are untouched).
    const text = fs.readFileSync(path.join(WORKFLOWS, file), 'utf8').replace(/^  triggers:\n(?:    .*\n|\s*\n)*/m, '');
    const name = text.match(/^  name:\s*([a-z0-9-]+)/m)?.[1];
    await fulfil.api('PUT', `/v1/promises/${name}`, { body: text, contentType: 'application/yaml', expect: [200, 201] });
    applied.push(name as string);
  }
  await fulfil.apply(path.join(FIXTURES, 'bs-provision.yaml'));
  out = fs.mkdtempSync(path.join(os.tmpdir(), 'fulfil-backstage-export-'));
}, 120_000);

afterAll(async () => {
  const panics = fulfil?.panics() ?? [];
  await fulfil?.stop();
  if (out) fs.rmSync(out, { recursive: true, force: true });
  expect(panics).toEqual([]);
}, 60_000);

const policy = EntityPolicies.allOf([
  new DefaultNamespaceEntityPolicy(),
  new NoForeignRootFieldsEntityPolicy(),
  new FieldFormatEntityPolicy(),
  new SchemaValidEntityPolicy(),
]);
const kindValidators = [
  componentEntityV1alpha1Validator,
  resourceEntityV1alpha1Validator,
  locationEntityV1alpha1Validator,
  templateEntityV1beta3Validator,
];

/** Validates as the catalog does: policies, then exactly one kind validator must accept it. */
async function validate(entity: Entity, file: string): Promise<Entity> {
  const checked = await policy.enforce(entity);
  if (!checked) throw new Error(`${file}: refused by the entity policies`);
  let accepted = 0;
  for (const validator of kindValidators) {
    try {
      if (await validator.check(checked)) accepted += 1;
    } catch (error) {
      throw new Error(`${file}: ${(error as Error).message}`);
    }
  }
  if (accepted !== 1) throw new Error(`${file}: ${accepted} kind validators accepted ${entity.kind}`);
  return checked;
}

async function exportTo(dir: string): Promise<Map<string, Entity>> {
  const stdout = await run(fulfilBin(), ['backstage', 'export', '--out', dir], {
    env: { ...process.env, FULFIL_API_URL: fulfil.base, FULFIL_TOKEN: fulfil.token, FULFIL_CONSOLE_URL: '' },
  });
  expect(stdout).toMatch(/^wrote \d+ Templates, \d+ Promise Components and \d+ request Resources to /);
  const files = new Map<string, Entity>();
  const walk = (rel: string) => {
    for (const entry of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const child = path.join(rel, entry.name);
      if (entry.isDirectory()) walk(child);
      else files.set(child, undefined as any);
    }
  };
  walk('');
  for (const file of [...files.keys()]) {
    const text = fs.readFileSync(path.join(dir, file), 'utf8');
    // Not written by the export (the test puts one there): not its business.
    if (text.split('\n')[0] !== HEADER) {
      files.delete(file);
      continue;
    }
    const docs = YAML.parseAllDocuments(text);
    expect(docs).toHaveLength(1);
    expect(docs[0].errors).toEqual([]);
    files.set(file, await validate(docs[0].toJS(), file));
  }
  return files;
}

async function file(promise: string, params: unknown, token?: string): Promise<any> {
  const accepted = await fulfil.api('POST', `/v1/promises/${promise}/requests`, { body: { params }, expect: 202, token });
  await fulfil.runUntil(accepted.run_id, (r) => ['succeeded', 'failed', 'compensated', 'cancelled'].includes(r.status), 'the end');
  return accepted;
}

test('every Promise becomes a Template and a Component, every live request a Resource; the catalog model accepts all', async () => {
  const team = await fulfil.api('POST', '/v1/tokens', {
    body: { name: `web-${fulfil.suffix}`, team: 'team-web', roles: ['requester', 'viewer'] },
    expect: 201,
  });
  const orders = await file('postgres-database', { name: 'orders', size: 'large' }, team.token);
  const ml = await file('ml-environment', { team: 'vision', gpus: 2 });
  const provisioned = await file('bs-provision', { name: 'cache' });
  const gone = await file('postgres-database', { name: 'dropped' });
  await fulfil.api('DELETE', `/v1/requests/${gone.request_id}?force=true`, { expect: 202 });

  const files = await exportTo(out);
  const promises = (await fulfil.api('GET', '/v1/promises?limit=500')).items.map((p: any) => p.name).sort();
  expect(promises).toEqual([...applied].sort());
  expect(promises).toContain('postgres-database');
  const byKind = (kind: string) => [...files.entries()].filter(([, e]) => e.kind === kind);
  expect(byKind('Template').map(([, e]) => e.metadata.name).sort()).toEqual(promises);
  expect(byKind('Component').map(([, e]) => e.metadata.name).sort()).toEqual(promises);
  expect(byKind('Location')).toHaveLength(1);
  const resources = byKind('Resource').map(([, e]) => e);
  const requestIds = resources.map((e) => e.metadata.annotations?.['fulfil.dev/request-id']).sort();
  expect(requestIds).toEqual([orders.request_id, ml.request_id, provisioned.request_id].sort());

  // Every reference names an entity the export wrote.
  const written = new Set([...files.values()].map((e) => stringifyEntityRef(e)));
  for (const e of resources) {
    const deps = (e.spec?.dependsOn as string[]) ?? [];
    expect(deps).toHaveLength(1);
    for (const dep of deps) expect(written).toContain(stringifyEntityRef(parseEntityRef(dep)));
  }
  // The Location names every other file, and only those.
  const [[locationFile, location]] = byKind('Location');
  expect(locationFile).toBe('catalog-info.yaml');
  const targets = (location.spec?.targets as string[]).map((t) => path.normalize(t));
  expect(targets.sort()).toEqual([...files.keys()].filter((f) => f !== 'catalog-info.yaml').sort());

  // The request filed by team-web belongs to team-web; the others to their Promise's owner.
  const ordersEntity = resources.find((e) => e.metadata.annotations?.['fulfil.dev/request-id'] === orders.request_id)!;
  expect(ordersEntity.spec?.owner).toBe('group:default/team-web');
  expect(ordersEntity.spec?.type).toBe('fulfil-request');
  expect(ordersEntity.spec?.dependsOn).toEqual(['component:default/postgres-database']);
  expect(ordersEntity.metadata.title).toBe('postgres-database: orders');
  expect(ordersEntity.metadata.annotations?.['fulfil.dev/promise']).toBe('postgres-database');
  expect(ordersEntity.metadata.links?.[0].url).toBe(`${fulfil.base}/ui/requests/${orders.request_id}`);
  // Filed by the bootstrap admin: its team (the Promise owner's team
  // stands in only for a request with none, as an event's; unit-tested).
  const mlEntity = resources.find((e) => e.metadata.annotations?.['fulfil.dev/request-id'] === ml.request_id)!;
  const mlRequest = await fulfil.api('GET', `/v1/requests/${ml.request_id}`);
  expect(mlRequest.team).toBeTruthy();
  expect(mlEntity.spec?.owner).toBe(`group:default/${mlRequest.team}`);

  // The postgres-database Template: its form is the Promise's schema, its
  // step files with the action, its output links to the run.
  const template = files.get('templates/postgres-database.yaml')!;
  const spec = template.spec as any;
  expect(spec.owner).toBe('group:default/team-data');
  expect(spec.parameters).toHaveLength(1);
  const page = spec.parameters[0];
  expect(page.required).toEqual(['name']);
  expect(page.properties.name).toMatchObject({ type: 'string', pattern: '^[a-z][a-z0-9-]{2,30}$', title: 'Name' });
  expect(page.properties.size).toMatchObject({ enum: ['small', 'large'], default: 'small' });
  expect(page.properties.environment.enum).toEqual(['development', 'staging', 'production']);
  expect(page['ui:order'][0]).toBe('name');
  expect(spec.steps).toHaveLength(1);
  expect(spec.steps[0]).toMatchObject({
    action: 'fulfil:request:create',
    input: { promise: 'postgres-database', params: { name: '${{ parameters.name }}', size: '${{ parameters.size }}' } },
  });
  expect(Object.keys(spec.steps[0].input.params).sort()).toEqual(Object.keys(page.properties).sort());
  expect(spec.output.links[0].url).toBe(`\${{ steps['${spec.steps[0].id}'].output.runUrl }}`);

  // Exported again after a deletion: the deleted request's file is gone,
  // the others are rewritten, a file the export did not write is kept.
  fs.writeFileSync(path.join(out, 'requests', 'hand-written.yaml'), 'apiVersion: backstage.io/v1alpha1\n');
  await fulfil.api('DELETE', `/v1/requests/${provisioned.request_id}?force=true`, { expect: 202 });
  const after = await exportTo(out);
  expect(fs.existsSync(path.join(out, 'requests', 'hand-written.yaml'))).toBe(true);
  expect(after.has('catalog-info.yaml')).toBe(true);
  const left = [...after.values()].filter((e) => e.kind === 'Resource').map((e) => e.metadata.annotations?.['fulfil.dev/request-id']);
  expect(left.sort()).toEqual([orders.request_id, ml.request_id].sort());
});
