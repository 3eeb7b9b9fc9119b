/** Routes over the run registry (SQLite): experiments, one experiment's runs, one run's full row. */
import type { Hono } from 'hono';
import type { ExperimentRunResponse, ExperimentRunsResponse, ExperimentsResponse } from '../api.ts';
import type { VizContext } from './app.ts';
import { notFound } from './errors.ts';
import { intParam, stringParam } from './params.ts';
import { activity, registryRun } from './runs.ts';

const parsed = (json: string | null): unknown => (json === null ? null : JSON.parse(json));

export function registryRoutes(app: Hono, { store, registry }: VizContext): void {
  app.get('/api/experiments', (c) => c.json<ExperimentsResponse>({ experiments: registry.experiments() }));

  app.get('/api/experiments/runs', async (c) => {
    const experiment = stringParam(c, 'experiment_id');
    const limit = intParam(c, 'limit', { min: 1, max: 2000, def: 200 });
    const runs: ExperimentRunsResponse['runs'] = [];
    for (const r of registry.runs(experiment).slice(0, limit)) runs.push(registryRun(r, await activity(store, r.id)));
    return c.json<ExperimentRunsResponse>({ runs });
  });

  app.get('/api/experiments/run', async (c) => {
    const id = stringParam(c, 'run', { required: true });
    const r = registry.run(id);
    if (!r) throw notFound(`run=${JSON.stringify(id)} is not in the registry ${registry.path}`);
    const run = {
      ...registryRun(r, await activity(store, r.id)),
      config: parsed(r.config_json),
      results: parsed(r.results_json),
    };
    return c.json<ExperimentRunResponse>({ run });
  });
}
