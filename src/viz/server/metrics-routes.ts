/**
 * Routes over a run's metrics: runs, summary, tags, series, router, router heatmap, GPUs. Each answer is one
 * store.read (metrics-store.ts), cached until the run's files change; shapes are those of src/viz/api.ts.
 */
import type { Hono } from 'hono';
import type {
  GpuReading,
  GpuResponse,
  RouterHeatmapResponse,
  RouterLayer,
  RouterResponse,
  RunsResponse,
  SeriesResponse,
  SummaryResponse,
  TagsResponse,
} from '../api.ts';
import type { VizContext } from './app.ts';
import { grid, latest, series, span, tagList, type TagMatch } from './metrics-queries.ts';
import type { MetricsDb } from './run-db.ts';
import { checkRunName, checkTag, enumParam, intParam, listParam, optionalIntParam, runParam } from './params.ts';
import { listRuns } from './runs.ts';

const SUMMARY: TagMatch = {
  tags: ['train/loss', 'optimizer/lr'],
  prefixes: ['throughput/', 'efficiency/', 'gpu_agg/'],
};
const ROUTER_METRICS = ['cv', 'entropy', 'max_load', 'bias_range', 'experts_active'] as const;
const GPU_FIELDS = [
  'utilization_gpu',
  'memory_used_gib',
  'memory_total_gib',
  'power_draw_w',
  'power_limit_w',
  'temperature_c',
  'clocks_sm_mhz',
  'throttle_thermal',
  'throttle_power',
  'throttle_hw_slowdown',
  'throttle_apps',
  'ecc_corrected',
  'ecc_uncorrected',
] as const;

const latestOf = async (db: MetricsDb, match: TagMatch) => latest(db, match, (await span(db))?.last ?? null);

/** The newest step among `points`, or null. */
const newest = (points: Iterable<{ step: number }>) =>
  [...points].reduce<number | null>((m, p) => Math.max(m ?? p.step, p.step), null);

export function metricsRoutes(app: Hono, { store, registry }: VizContext): void {
  app.get('/api/runs', async (c) => c.json<RunsResponse>({ runs: await listRuns(store, registry) }));

  app.get('/api/summary', async (c) => {
    const run = runParam(c);
    const summary = await store.read(run, 'summary', async (db) => Object.fromEntries(await latestOf(db, SUMMARY)));
    return c.json<SummaryResponse>({ run, summary });
  });

  app.get('/api/tags', async (c) => {
    const run = runParam(c);
    return c.json<TagsResponse>({ run, tags: await store.read(run, 'tags', tagList) });
  });

  app.get('/api/series', async (c) => {
    const runs = listParam(c, 'run', 10, checkRunName);
    const tags = listParam(c, 'tag', 20, checkTag);
    const points = intParam(c, 'points', { min: 200, max: 5000, def: 1000 });
    const since = optionalIntParam(c, 'since_step', { min: 0, max: 2 ** 31 - 1 });
    const out: SeriesResponse['series'] = [];
    for (const run of runs) {
      const got = await store.read(run, `series ${points} ${since} ${JSON.stringify(tags)}`, (db) =>
        series(db, tags, points, since),
      );
      for (const tag of tags) out.push({ run, tag, ...got.get(tag)! });
    }
    return c.json<SeriesResponse>({ series: out });
  });

  app.get('/api/router', async (c) => {
    const run = runParam(c);
    const got = await store.read(run, 'router', (db) => latestOf(db, { prefixes: ['router/layer_', 'router_agg/'] }));
    const layers = new Map<number, RouterLayer>();
    const agg: Record<string, number> = {};
    for (const [tag, p] of got) {
      const m = /^router\/layer_(\d+)\/(\w+)$/.exec(tag);
      if (m && (ROUTER_METRICS as readonly string[]).includes(m[2]!)) {
        const idx = Number(m[1]);
        const layer =
          layers.get(idx) ??
          layers
            .set(idx, { idx, cv: null, entropy: null, max_load: null, bias_range: null, experts_active: null })
            .get(idx)!;
        layer[m[2] as (typeof ROUTER_METRICS)[number]] = p.value;
      } else if (tag.startsWith('router_agg/')) agg[tag.slice('router_agg/'.length)] = p.value;
    }
    const experts = registry.config(run)?.n_routed_experts;
    const n = typeof experts === 'number' ? experts : null;
    const sorted = [...layers.values()].sort((a, b) => a.idx - b.idx);
    const alerts =
      n === null
        ? []
        : sorted
            .filter((l) => l.experts_active !== null && l.experts_active < n)
            .map((l) => ({ idx: l.idx, dead_experts: n - l.experts_active! }));
    return c.json<RouterResponse>({
      run,
      step: newest(got.values()),
      layers: sorted,
      agg,
      alerts,
      n_routed_experts: n,
    });
  });

  app.get('/api/router/heatmap', async (c) => {
    const run = runParam(c);
    const metric = enumParam(c, 'metric', ROUTER_METRICS, 'cv');
    const points = intParam(c, 'points', { min: 10, max: 2000, def: 200 });
    const g = await store.read(run, `heatmap ${metric} ${points}`, (db) =>
      grid(db, 'router/layer_', `/${metric}`, points),
    );
    const layers = g.rows.map((r) => Number(/^router\/layer_(\d+)\//.exec(r.key)?.[1] ?? NaN));
    return c.json<RouterHeatmapResponse>({ run, metric, steps: g.steps, layers, values: g.rows.map((r) => r.values) });
  });

  app.get('/api/gpu', async (c) => {
    const run = runParam(c);
    const got = await store.read(run, 'gpu', (db) => latestOf(db, { prefixes: ['gpu/', 'gpu_agg/'] }));
    const gpus = new Map<number, GpuReading>();
    const agg: Record<string, number> = {};
    for (const [tag, p] of got) {
      const m = /^gpu\/(\d+)\/(\w+)$/.exec(tag);
      if (m && (GPU_FIELDS as readonly string[]).includes(m[2]!)) {
        const index = Number(m[1]);
        const gpu =
          gpus.get(index) ??
          gpus.set(index, { index, ...Object.fromEntries(GPU_FIELDS.map((f) => [f, null])) } as GpuReading).get(index)!;
        gpu[m[2] as (typeof GPU_FIELDS)[number]] = p.value;
      } else if (tag.startsWith('gpu_agg/')) agg[tag.slice('gpu_agg/'.length)] = p.value;
    }
    return c.json<GpuResponse>({
      run,
      step: newest(got.values()),
      gpus: [...gpus.values()].sort((a, b) => a.index - b.index),
      agg,
    });
  });
}
