/**
 * Fulfil for Backstage: the scaffolder action `fulfil:request:create` as a
 * backend module (the default export) and as a factory for backends that
 * register actions themselves.
 */

export { fulfilScaffolderModule as default } from './module';
export { ACTION_ID, createFulfilRequestAction } from './action';
export type { FulfilActionOptions } from './action';
export { FulfilApiError, FulfilClient } from './client';
export { idempotencyKey } from './idempotency';
