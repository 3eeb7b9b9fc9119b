/**
 * Routes over the data root: listings, manifests, shard statistics and windows, .idx summaries and documents,
 * flows and HYDRA sidecars.
 */
import type { Context, Hono } from 'hono';
import type { VizContext } from './app.ts';
import { indexDoc, indexHeader, listDir, manifestPreview, shardStats, shardWindow } from './datasets.ts';
import { flowStatus, listFlows } from './flows.ts';
import { hydraSidecar } from './hydra-sidecar.ts';
import { intParam, optionalIntParam, stringParam } from './params.ts';

const MAX_TOKEN_ID = 2 ** 32 - 1;
/** Largest token offset or document index accepted: the largest integer a double holds exactly. */
const MAX_INDEX = Number.MAX_SAFE_INTEGER;

const path = (c: Context, name = 'path') => stringParam(c, name, { required: true });

export function datasetRoutes(app: Hono, { dataRoot, flowTomls }: VizContext): void {
  app.get('/api/datasets', (c) => c.json(listDir(dataRoot, stringParam(c, 'path') ?? '.')));

  app.get('/api/datasets/manifest', (c) =>
    c.json(manifestPreview(dataRoot, path(c), intParam(c, 'limit_shards', { min: 1, max: 2000, def: 200 }))),
  );

  app.get('/api/datasets/shard/stats', (c) =>
    c.json(
      shardStats(dataRoot, path(c), {
        scanTokens: intParam(c, 'scan_tokens', { min: 1, max: 2_000_000, def: 250_000 }),
        topK: intParam(c, 'top_k', { min: 1, max: 1000, def: 20 }),
        vocabSize: optionalIntParam(c, 'vocab_size', { min: 1, max: 2 ** 24 }),
        eosTokenId: optionalIntParam(c, 'eos_token_id', { min: 0, max: MAX_TOKEN_ID }),
      }),
    ),
  );

  app.get('/api/datasets/shard/window', (c) =>
    c.json(
      shardWindow(
        dataRoot,
        path(c),
        intParam(c, 'offset', { min: 0, max: MAX_INDEX, def: 0 }),
        intParam(c, 'length', { min: 1, max: 4096, def: 256 }),
      ),
    ),
  );

  app.get('/api/datasets/index/header', (c) => c.json(indexHeader(dataRoot, path(c))));

  app.get('/api/datasets/index/doc', async (c) =>
    c.json(
      await indexDoc(
        dataRoot,
        path(c, 'shard_path'),
        intParam(c, 'doc_idx', { min: 0, max: MAX_INDEX }),
        intParam(c, 'max_tokens', { min: 1, max: 65_536, def: 4096 }),
      ),
    ),
  );

  app.get('/api/datasets/flows', (c) => c.json(listFlows(dataRoot, flowTomls)));

  app.get('/api/datasets/flow', (c) =>
    c.json(flowStatus(dataRoot, flowTomls, stringParam(c, 'flow', { required: true }))),
  );

  app.get('/api/datasets/hydra', async (c) =>
    c.json(await hydraSidecar(dataRoot, path(c), intParam(c, 'bins', { min: 2, max: 200, def: 20 }))),
  );
}
