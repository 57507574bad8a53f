import { coreServices, createBackendModule } from '@backstage/backend-plugin-api';
import { scaffolderActionsExtensionPoint } from '@backstage/plugin-scaffolder-node';

import { createFulfilRequestAction } from './action';

/**
 * The scaffolder module registering `fulfil:request:create`; add it to the
 * backend with `backend.add(import('@fulfil/backstage-plugin-scaffolder-backend-module-fulfil'))`.
 * It reads `fulfil.baseUrl`, `fulfil.token` and `fulfil.consoleUrl` from
 * the app config at each invocation.
 */
export const fulfilScaffolderModule = createBackendModule({
  pluginId: 'scaffolder',
  moduleId: 'fulfil',
  register(reg) {
    reg.registerInit({
      deps: { scaffolder: scaffolderActionsExtensionPoint, config: coreServices.rootConfig },
      async init({ scaffolder, config }) {
        scaffolder.addActions(createFulfilRequestAction({ config }));
      },
    });
  },
});
