/**
 * `nmoe bench viz`: the dashboard on a long run. Builds a synthetic run in the reference's schema (by default
 * 100,000 steps x 200 of the tags training writes, 20M rows, in step order as training writes them), registers it
 * as completed (so the server keeps its files attached between requests, as for any finished run), serves it, and
 * times (a) series requests for 5 tags downsampled to a chart's width, each for tags not asked before, so nothing
 * comes from the server's answer cache (the first one also attaches the files), and (b) a real browser loading a
 * page until the web app marks it ready (`<html data-ready="true">`: its data loaded and rendered), first with the
 * server's caches cold, then warm.
 */
import { join } from 'node:path';
import { metricsDdl, metricsPath, sqlString } from '../metrics/duckdb-writer.ts';
import { Registry } from '../metrics/registry.ts';
import { startVizServer } from '../viz/server/server.ts';
import { ascending, quantile } from '../util/quantile.ts';
import { makeDirs } from '../util/dirs.ts';

const CORE = [
  'train/loss',
  'optimizer/lr',
  'optimizer/grad_norm',
  'throughput/tokens_per_s_gpu',
  'throughput/ms_per_step',
  'throughput/loader_wait_ms',
  'efficiency/tflops',
  'efficiency/mfu',
  'efficiency/bf16_tflops',
  'efficiency/fp8_tflops',
  'memory/current_alloc_gib',
  'memory/max_alloc_gib',
  ...['mean_cv', 'std_cv', 'mean_entropy', 'min_entropy', 'dead_experts_count', 'experts_active_mean'].map(
    (k) => `router_agg/${k}`,
  ),
];
const ROUTER = ['cv', 'entropy', 'experts_active', 'bias_range', 'max_load'];
const GPU = [
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
];

/** 200 tags as a moonlight-sized run on 4 GPUs writes them: 18 core and aggregate, 26 MoE layers x 5, 4 GPUs x 13. */
export const BENCH_TAGS: readonly string[] = [
  ...CORE,
  ...Array.from({ length: 26 }, (_, l) => ROUTER.map((k) => `router/layer_${String(l).padStart(2, '0')}/${k}`)).flat(),
  ...Array.from({ length: 4 }, (_, g) => GPU.map((k) => `gpu/${g}/${k}`)).flat(),
];

/**
 * Writes `steps` x BENCH_TAGS rows into `{dir}/{run}/rank_0.duckdb` with one INSERT ... SELECT over range(): the
 * loss decays from about 11 to 2 with a little noise, every other tag is a slow wave of its own.
 */
export async function writeSyntheticRun(
  dir: string,
  run: string,
  steps: number,
): Promise<{ rows: number; seconds: number }> {
  const t0 = performance.now();
  makeDirs(join(dir, run));
  const { DuckDBInstance } = await import('@duckdb/node-api');
  const db = await DuckDBInstance.create(metricsPath(dir, run, 0));
  const conn = await db.connect();
  try {
    await conn.run(metricsDdl());
    const n = BENCH_TAGS.length;
    const tags = `[${BENCH_TAGS.map(sqlString).join(', ')}]`;
    const firstTs = Date.now() - steps * 250;
    await conn.run(
      `INSERT INTO metrics SELECT ?, ${tags}[i % ${n} + 1], (i // ${n} + 1)::INTEGER, ${firstTs} + (i // ${n}) * 250,
      CASE WHEN i % ${n} = 0 THEN 2 + 9 * exp(-(i // ${n}) / (${steps} / 5)) + 0.05 * sin(i) ELSE i % ${n} + sin((i // ${n}) / (50.0 + i % ${n})) END
      FROM range(${steps * n}) r(i)`,
      [run],
    );
    await conn.run('CHECKPOINT');
  } finally {
    conn.closeSync();
    db.closeSync();
  }
  return { rows: steps * BENCH_TAGS.length, seconds: (performance.now() - t0) / 1000 };
}

export interface Timing {
  medianMs: number;
  p90Ms: number;
  samples: number;
}

function timing(ms: number[]): Timing {
  const s = ascending(ms);
  return { medianMs: quantile(s, 0.5), p90Ms: quantile(s, 0.9), samples: s.length };
}

async function timedGet(url: string): Promise<number> {
  const t0 = performance.now();
  const r = await fetch(url);
  await r.arrayBuffer();
  if (!r.ok) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return performance.now() - t0;
}

export interface PageTiming {
  path: string;
  coldMs: number;
  warm: Timing;
}

export interface VizBenchResult {
  rows: number;
  writeSeconds: number;
  /** The first series request, which attaches the run's files. */
  seriesFirstMs: number;
  /** The others. */
  series: Timing;
  seriesCachedMs: number;
  /** Null when no browser was asked for. */
  pages: PageTiming[] | null;
  browser: string | null;
}

export interface VizBenchOptions {
  dir: string;
  steps: number;
  requests: number;
  points: number;
  /** A Chromium executable, or null to skip the browser part. */
  chromium: string | null;
  pageLoads: number;
}

export async function benchViz(o: VizBenchOptions): Promise<VizBenchResult> {
  const run = `bench_viz_${o.steps}x${BENCH_TAGS.length}`;
  const metricsDir = join(o.dir, 'metrics');
  const written = await writeSyntheticRun(metricsDir, run, o.steps);
  // Registered as finished, as a real run would be, so the server keeps its files attached between requests.
  const registry = new Registry(join(o.dir, 'experiments.db'));
  registry.startRun({ id: run, experimentId: 'bench_viz', config: { steps: o.steps }, gitHash: null, gitDirty: null });
  registry.endRun(run, 'completed', {});
  registry.close();
  const server = await startVizServer({
    metricsDir,
    experimentsDb: join(o.dir, 'experiments.db'),
    dataRoot: o.dir,
    host: '127.0.0.1',
    port: 0,
  });
  try {
    const seriesUrl = (k: number) => {
      const tags = Array.from({ length: 5 }, (_, j) => BENCH_TAGS[(5 * k + j) % BENCH_TAGS.length]!);
      return `${server.url}api/series?run=${run}&${tags.map((t) => `tag=${encodeURIComponent(t)}`).join('&')}&points=${o.points}`;
    };
    const ms: number[] = [];
    for (let k = 0; k <= o.requests; k++) ms.push(await timedGet(seriesUrl(k)));
    const seriesCachedMs = await timedGet(seriesUrl(0));
    const browser = o.chromium ? await timePages(o.chromium, server.url, ['', `runs/${run}`], o.pageLoads) : null;
    return {
      rows: written.rows,
      writeSeconds: written.seconds,
      seriesFirstMs: ms[0]!,
      series: timing(ms.slice(1)),
      seriesCachedMs,
      pages: browser?.pages ?? null,
      browser: browser?.version ?? null,
    };
  } finally {
    await server.close();
  }
}

/** Each page loaded `loads` times, each in a fresh browser context (empty cache), timed from navigation to ready. */
async function timePages(
  executablePath: string,
  base: string,
  paths: string[],
  loads: number,
): Promise<{ version: string; pages: PageTiming[] }> {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
  try {
    const pages: PageTiming[] = [];
    for (const path of paths) {
      const ms: number[] = [];
      for (let i = 0; i < loads; i++) {
        const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
        const page = await context.newPage();
        const t0 = performance.now();
        await page.goto(base + path);
        await page.waitForFunction(() => document.documentElement.dataset.ready === 'true', null, { timeout: 30_000 });
        ms.push(performance.now() - t0);
        await context.close();
      }
      pages.push({ path: `/${path}`, coldMs: ms[0]!, warm: timing(ms.slice(1)) });
    }
    return { version: `Chromium ${browser.version()}`, pages };
  } finally {
    await browser.close();
  }
}
