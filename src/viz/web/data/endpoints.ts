/**
 * Every request the app makes, one builder per route of src/viz/api.ts. A builder returns the URL tagged with its
 * response type, so `useApi(endpoints.runs())` is typed by the route and no page can fetch a route the contract
 * does not have.
 */
import type {
  DatasetManifestResponse,
  DatasetsListResponse,
  ExperimentRunsResponse,
  ExperimentsResponse,
  FlowResponse,
  FlowsResponse,
  GpuResponse,
  HydraSidecarResponse,
  IndexDocResponse,
  IndexHeaderResponse,
  RouterHeatmapResponse,
  RouterResponse,
  RunsResponse,
  SeriesResponse,
  ShardStatsResponse,
  ShardWindowResponse,
  SummaryResponse,
  TagsResponse,
} from '../../api.ts';

/** A URL whose JSON answer is a `T` (the phantom field exists only for the type checker). */
export type Endpoint<T> = string & { readonly __response?: T };

type Param = string | number | undefined | readonly string[];

function endpoint<T>(path: string, params: Record<string, Param> = {}): Endpoint<T> {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined) continue;
    for (const v of typeof value === 'object' ? value : [value]) query.append(key, String(v));
  }
  const q = query.toString();
  return q ? `${path}?${q}` : path;
}

/** Router metrics the heatmap route knows. */
export type RouterMetric = 'max_load' | 'cv' | 'entropy' | 'bias_range' | 'experts_active';

export const endpoints = {
  runs: () => endpoint<RunsResponse>('/api/runs'),
  summary: (run: string) => endpoint<SummaryResponse>('/api/summary', { run }),
  tags: (run: string) => endpoint<TagsResponse>('/api/tags', { run }),
  series: (runs: readonly string[], tags: readonly string[], opts: { points?: number; sinceStep?: number }) =>
    endpoint<SeriesResponse>('/api/series', { run: runs, tag: tags, points: opts.points, since_step: opts.sinceStep }),
  router: (run: string) => endpoint<RouterResponse>('/api/router', { run }),
  routerHeatmap: (run: string, metric: RouterMetric, points: number) =>
    endpoint<RouterHeatmapResponse>('/api/router/heatmap', { run, metric, points }),
  gpu: (run: string) => endpoint<GpuResponse>('/api/gpu', { run }),
  experiments: () => endpoint<ExperimentsResponse>('/api/experiments'),
  experimentRuns: (experimentId: string | undefined) =>
    endpoint<ExperimentRunsResponse>('/api/experiments/runs', { experiment_id: experimentId, limit: 500 }),
  datasets: (path: string) => endpoint<DatasetsListResponse>('/api/datasets', { path: path || undefined }),
  manifest: (path: string) => endpoint<DatasetManifestResponse>('/api/datasets/manifest', { path }),
  shardStats: (path: string, vocab?: { vocab_size: number; eos_token_id: number }) =>
    endpoint<ShardStatsResponse>('/api/datasets/shard/stats', {
      path,
      vocab_size: vocab?.vocab_size,
      eos_token_id: vocab?.eos_token_id,
    }),
  shardWindow: (path: string, offset: number, length: number) =>
    endpoint<ShardWindowResponse>('/api/datasets/shard/window', { path, offset, length }),
  indexHeader: (path: string) => endpoint<IndexHeaderResponse>('/api/datasets/index/header', { path }),
  flows: () => endpoint<FlowsResponse>('/api/datasets/flows'),
  flow: (flow: string) => endpoint<FlowResponse>('/api/datasets/flow', { flow }),
  hydra: (path: string) => endpoint<HydraSidecarResponse>('/api/datasets/hydra', { path }),
  indexDoc: (shardPath: string, docIdx: number) =>
    endpoint<IndexDocResponse>('/api/datasets/index/doc', { shard_path: shardPath, doc_idx: docIdx, max_tokens: 4096 }),
};

/**
 * How long to keep asking when the server answers 503, "try again in a moment": a live run's metrics file is being
 * written. Retried with backoff rather than shown as an error, since the answer comes as soon as the write ends.
 */
const BUSY_GIVE_UP_MS = 20_000;
const BUSY_RETRY_MAX_MS = 2000;

/** GETs an endpoint; a non-2xx answer throws its `{error}` message (a 503 only after retrying BUSY_GIVE_UP_MS). */
export async function fetchJson<T>(url: Endpoint<T>, signal?: AbortSignal): Promise<T> {
  const started = Date.now();
  for (let delay = 250; ; delay = Math.min(2 * delay, BUSY_RETRY_MAX_MS)) {
    const res = await fetch(url, { signal, headers: { accept: 'application/json' } });
    if (res.status === 503 && Date.now() - started < BUSY_GIVE_UP_MS) {
      await res.body?.cancel();
      await new Promise((resolve) => setTimeout(resolve, delay));
      signal?.throwIfAborted();
      continue;
    }
    const body = (await res.json().catch(() => null)) as (T & { error?: string }) | null;
    if (!res.ok || body === null) throw new Error(body?.error ?? `${res.status} ${res.statusText} (${url})`);
    return body;
  }
}
