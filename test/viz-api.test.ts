/**
 * The dashboard's API against real files: a short `nmoe train` (CPU, every step logged) and a `nmoe data prep` in
 * beforeAll, a synthetic 10k-step run written by the metrics writer, and the server on a free port. Every route's
 * answer is checked against what the run wrote (read straight from its DuckDB file and registry) or what nmoe's
 * data readers return, and one test reads a run while `nmoe train` is still writing it.
 */
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type {
  DatasetManifestResponse,
  DatasetsListResponse,
  ExperimentRunResponse,
  ExperimentRunsResponse,
  ExperimentsResponse,
  GpuResponse,
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
} from '../src/viz/api.ts';
import { readIndex } from '../src/data/idx.ts';
import { embeddedDocuments } from '../src/data/embedded-corpus.ts';
import { readManifest } from '../src/data/manifest.ts';
import { NpyShard } from '../src/data/shard.ts';
import { normalizeText } from '../src/data/text.ts';
import { MetricsWriter, metricsPath } from '../src/metrics/duckdb-writer.ts';
import { Registry } from '../src/metrics/registry.ts';
import { type VizServer, startVizServer } from '../src/viz/server/server.ts';
import { nmoe, nmoeAsync, removeTempDirs, tempDir, writeJsonl } from './fixtures/data/helpers.ts';
import { type Row, getJson, openForWriteInChild, readRows, trainArgs } from './helpers/viz.ts';

const dir = tempDir('viz-api');
const metricsDir = join(dir, 'metrics');
const experimentsDb = join(dir, 'experiments.db');
const dataRoot = join(dir, 'data');
const webRoot = join(dir, 'web');
const STEPS = 6;
const SYNTHETIC = 'synthetic_10k';
let server: VizServer;
let run: string;
let rows: Row[];
let finalLoss: number;

const get = <T>(path: string) => getJson<T>(server.url, path);
const rowsOf = (tag: string) => rows.filter((r) => r.tag === tag);
const lastOf = (tag: string) => rowsOf(tag).at(-1)!;

beforeAll(async () => {
  const trained = nmoe(trainArgs(dir, STEPS));
  expect(trained.code, trained.err).toBe(0);
  run = readdirSync(metricsDir)[0]!;
  rows = await readRows(metricsPath(metricsDir, run, 0));
  const reg = new Registry(experimentsDb);
  finalLoss = (JSON.parse(reg.getRun(run)!.results_json!) as { final_loss: number }).final_loss;
  // A run the registry knows that has logged nothing yet, and a metrics directory the registry does not know.
  reg.startRun({
    id: 'run_registry_only',
    experimentId: 'tiny',
    config: { n_routed_experts: 8 },
    gitHash: null,
    gitDirty: null,
  });
  reg.close();

  // 10k steps: a sine with one spike, two router layers and one GPU.
  const w = await MetricsWriter.open(metricsDir, SYNTHETIC, 0);
  for (let step = 1; step <= 10_000; step++) {
    w.record(
      step,
      {
        'synthetic/sine': step === 5000 ? 100 : Math.sin(step / 500),
        'router/layer_00/cv': step % 1000,
        'router/layer_01/cv': 2 * (step % 1000),
        'gpu/0/utilization_gpu': step % 100,
        'gpu_agg/mean_utilization_gpu': step % 100,
      },
      1_700_000_000_000 + step,
    );
  }
  await w.close();

  const input = join(dir, 'book.jsonl');
  writeJsonl(
    input,
    embeddedDocuments()
      .slice(0, 4)
      .map((text, i) => ({ id: `ch${i}`, text })),
  );
  const prep = nmoe([
    'data',
    'prep',
    '--source',
    'jsonl',
    '--paths',
    input,
    '-o',
    join(dataRoot, 'moby'),
    '--name',
    'moby',
    '--tokenizer',
    'bytes',
    '--num-shards',
    '1',
    '-j',
    '1',
  ]);
  expect(prep.code, prep.err).toBe(0);

  mkdirSync(join(webRoot, 'assets'), { recursive: true });
  writeFileSync(join(webRoot, 'index.html'), '<!doctype html><title>nmoe viz</title>');
  writeFileSync(join(webRoot, 'assets', 'app.js'), 'console.log(1);');
  server = await startVizServer({ metricsDir, experimentsDb, dataRoot, host: '127.0.0.1', port: 0, webRoot });
}, 120_000);

afterAll(async () => {
  await server?.close();
  removeTempDirs();
});

describe('nmoe viz API on a real run', () => {
  it('lists runs newest first, merged with the registry, including runs only one side knows', async () => {
    expect((await get('/api/health')).body).toEqual({ ok: true });
    expect((await fetch(new URL('/api/runs', server.url))).headers.get('cache-control')).toBe('no-cache'); // polls see new rows
    const { status, body } = await get<RunsResponse>('/api/runs');
    expect(status).toBe(200);
    const trained = body.runs.find((r) => r.run === run)!;
    expect(trained).toMatchObject({
      last_step: STEPS,
      last_ts: lastOf('train/loss').ts_ms,
      last_loss: finalLoss,
      tokens_per_s: lastOf('throughput/tokens_per_s_gpu').value,
      mfu: null,
      experiment_id: 'tiny',
      status: 'completed',
      started_at: expect.stringMatching(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/),
    });
    expect(body.runs.find((r) => r.run === 'run_registry_only')).toMatchObject({
      last_ts: null,
      last_step: null,
      last_loss: null,
      status: 'running',
    });
    expect(body.runs.find((r) => r.run === SYNTHETIC)).toMatchObject({
      last_step: 10_000,
      status: null,
      experiment_id: null,
    });
    const ts = body.runs.map((r) => r.last_ts).filter((t) => t !== null);
    expect(ts).toEqual([...ts].sort((a, b) => b - a));
    expect(body.runs.at(-1)!.run).toBe('run_registry_only'); // no metrics: last
  });

  it('gives the summary and tag list that the run wrote', async () => {
    const summary = (await get<SummaryResponse>(`/api/summary?run=${run}`)).body.summary;
    expect(summary['train/loss']).toEqual({ step: STEPS, ts_ms: lastOf('train/loss').ts_ms, value: finalLoss });
    for (const tag of ['optimizer/lr', 'throughput/ms_per_step', 'efficiency/tflops'])
      expect(summary[tag]!.value, tag).toBe(lastOf(tag).value);
    expect(Object.keys(summary).some((t) => t.startsWith('router'))).toBe(false);
    const tags = (await get<TagsResponse>(`/api/tags?run=${run}`)).body.tags;
    expect(tags.map((t) => t.tag)).toEqual([...new Set(rows.map((r) => r.tag))].sort());
    expect(tags.find((t) => t.tag === 'train/loss')).toEqual({ tag: 'train/loss', count: STEPS, last_step: STEPS });
  });

  it('returns series exactly as logged, for several runs and tags at once, and only newer points after since_step', async () => {
    const { body } = await get<SeriesResponse>(
      `/api/series?run=${run}&run=${SYNTHETIC}&tag=train/loss&tag=optimizer/lr`,
    );
    expect(body.series.map((s) => [s.run, s.tag, s.total])).toEqual([
      [run, 'train/loss', STEPS],
      [run, 'optimizer/lr', STEPS],
      [SYNTHETIC, 'train/loss', 0],
      [SYNTHETIC, 'optimizer/lr', 0],
    ]);
    expect(body.series[0]!.points).toEqual(
      rowsOf('train/loss').map(({ step, ts_ms, value }) => ({ step, ts_ms, value })),
    );
    expect(body.series[0]!.points.at(-1)!.value).toBe(finalLoss);
    const newer = (await get<SeriesResponse>(`/api/series?run=${run}&tag=train/loss&since_step=4`)).body.series[0]!;
    expect(newer.points.map((p) => p.step)).toEqual([5, 6]);
    expect(newer.total).toBe(2);
    expect(
      (await get<SeriesResponse>(`/api/series?run=${run}&tag=train/loss&since_step=${STEPS}`)).body.series[0]!.points,
    ).toEqual([]);
  });

  it('downsamples 10k points to at most `points`, keeping the endpoints, the order and a one-step spike', async () => {
    for (const points of [200, 500, 5000]) {
      const s = (await get<SeriesResponse>(`/api/series?run=${SYNTHETIC}&tag=synthetic/sine&points=${points}`)).body
        .series[0]!;
      expect(s.total).toBe(10_000);
      expect(s.points.length).toBeLessThanOrEqual(points);
      expect(s.points.length).toBeGreaterThan(points * 0.9);
      expect(s.points[0]).toEqual({ step: 1, ts_ms: 1_700_000_000_001, value: Math.sin(1 / 500) });
      expect(s.points.at(-1)!.step).toBe(10_000);
      expect(s.points.every((p, i) => i === 0 || p.step > s.points[i - 1]!.step)).toBe(true);
      expect(s.points.find((p) => p.step === 5000)?.value).toBe(100);
      expect(s.points.every((p) => p.ts_ms === 1_700_000_000_000 + p.step)).toBe(true);
    }
    const live = (await get<SeriesResponse>(`/api/series?run=${SYNTHETIC}&tag=synthetic/sine&since_step=9990`)).body
      .series[0]!;
    expect(live.points.map((p) => p.step)).toEqual(Array.from({ length: 10 }, (_, i) => 9991 + i));
  });

  it('gives router health, its heatmap and the GPUs', async () => {
    const router = (await get<RouterResponse>(`/api/router?run=${run}`)).body;
    expect(router).toMatchObject({ run, step: STEPS, n_routed_experts: 8 });
    expect(router.layers.map((l) => l.idx)).toEqual([0, 1, 2]);
    for (const l of router.layers) {
      for (const k of ['cv', 'entropy', 'max_load', 'bias_range', 'experts_active'] as const) {
        expect(l[k], `layer ${l.idx} ${k}`).toBe(lastOf(`router/layer_0${l.idx}/${k}`).value);
      }
    }
    expect(router.agg.mean_cv).toBe(lastOf('router_agg/mean_cv').value);
    expect(router.alerts).toEqual(
      router.layers
        .filter((l) => l.experts_active! < 8)
        .map((l) => ({ idx: l.idx, dead_experts: 8 - l.experts_active! })),
    );

    const heat = (await get<RouterHeatmapResponse>(`/api/router/heatmap?run=${run}&metric=entropy`)).body;
    expect(heat.steps).toEqual([1, 2, 3, 4, 5, 6]);
    expect(heat.layers).toEqual([0, 1, 2]);
    expect(heat.values[2]).toEqual(rowsOf('router/layer_02/entropy').map((r) => r.value));
    const coarse = (await get<RouterHeatmapResponse>(`/api/router/heatmap?run=${SYNTHETIC}&metric=cv&points=10`)).body;
    expect(coarse.steps).toEqual(Array.from({ length: 10 }, (_, i) => 1 + 1000 * i));
    expect(coarse.values[0]).toEqual(Array.from({ length: 10 }, () => 499.5)); // the mean of step % 1000 over 1000 steps
    expect(coarse.values[1]![0]).toBe(999);

    expect((await get<GpuResponse>(`/api/gpu?run=${run}`)).body).toEqual({ run, step: null, gpus: [], agg: {} }); // a CPU run
    const gpu = (await get<GpuResponse>(`/api/gpu?run=${SYNTHETIC}`)).body;
    expect(gpu.step).toBe(10_000);
    expect(gpu.gpus).toEqual([expect.objectContaining({ index: 0, utilization_gpu: 0, power_draw_w: null })]);
    expect(gpu.agg).toEqual({ mean_utilization_gpu: 0 });
  });

  it('reads the registry: experiments, their runs and one run in full', async () => {
    const experiments = (await get<ExperimentsResponse>('/api/experiments')).body.experiments;
    expect(experiments).toEqual([
      expect.objectContaining({ id: 'tiny', project: 'nmoe', runs: 2, by_status: { completed: 1, running: 1 } }),
    ]);
    const runs = (await get<ExperimentRunsResponse>('/api/experiments/runs?experiment_id=tiny&limit=1')).body.runs;
    expect(runs).toHaveLength(1);
    const all = (await get<ExperimentRunsResponse>('/api/experiments/runs')).body.runs;
    expect(all.find((r) => r.id === run)).toMatchObject({
      status: 'completed',
      last_step: STEPS,
      git_hash: expect.stringMatching(/^[0-9a-f]{40}$/),
    });
    const one = (await get<ExperimentRunResponse>(`/api/experiments/run?run=${run}`)).body.run;
    expect(one).toMatchObject({
      id: run,
      last_step: STEPS,
      config: { n_routed_experts: 8, steps: STEPS },
      results: { final_loss: finalLoss },
    });
    expect((await get('/api/experiments/run?run=run_nobody')).status).toBe(404);
  });

  it("reads datasets with nmoe's own readers", async () => {
    const root = (await get<DatasetsListResponse>('/api/datasets')).body;
    expect(root).toMatchObject({ path: '.', entries: [{ name: 'moby', kind: 'dir', size: 0 }] });
    const m = (await get<DatasetManifestResponse>('/api/datasets/manifest?path=moby')).body;
    const manifest = readManifest(join(dataRoot, 'moby', 'manifest.json'));
    expect(m).toMatchObject({
      path: 'moby/manifest.json',
      dataset: 'moby',
      tokenizer: 'bytes',
      eos_token_id: 0,
      total_documents: 4,
      num_shards: 1,
    });
    const shardPath = m.shards[0]!.path;
    expect(shardPath).toBe(`moby/${manifest.shards[0]!.path}`);
    const shard = NpyShard.open(join(dataRoot, shardPath));
    const tokens = new Uint32Array(shard.length);
    shard.readSync(0, shard.length, tokens, 0);
    shard.close();

    const stats = (
      await get<ShardStatsResponse>(`/api/datasets/shard/stats?path=${shardPath}&scan_tokens=2000000&top_k=3`)
    ).body;
    expect(stats).toMatchObject({
      num_tokens: tokens.length,
      scanned: tokens.length,
      min_token: 0,
      max_token: Math.max(...tokens),
      eos_count: 4,
      double_eos: 0,
      out_of_range: 0,
      has_index: true,
    });
    expect(stats.top[0]).toEqual({ token: 32, count: tokens.filter((t) => t === 32).length }); // the space
    const window = (
      await get<ShardWindowResponse>(
        `/api/datasets/shard/window?path=${shardPath}&offset=${tokens.length - 10}&length=4096`,
      )
    ).body;
    expect(window.tokens).toEqual(Array.from(tokens.subarray(-10))); // cut at the end of the shard

    const idx = readIndex(join(dataRoot, m.shards[0]!.index_path!));
    const header = (await get<IndexHeaderResponse>(`/api/datasets/index/header?path=${m.shards[0]!.index_path}`)).body;
    const lengths = Array.from({ length: 4 }, (_, d) => idx[2 * d + 1]! - idx[2 * d]!).sort((a, b) => a - b);
    expect(header).toMatchObject({ num_documents: 4, doc_len: { min: lengths[0], max: lengths[3] } });
    expect(header.histogram.reduce((n, b) => n + b.count, 0)).toBe(4);
    const doc = (
      await get<IndexDocResponse>(`/api/datasets/index/doc?shard_path=${shardPath}&doc_idx=1&max_tokens=100`)
    ).body;
    expect(doc).toMatchObject({ doc_idx: 1, num_documents: 4, start: idx[2], end: idx[3], truncated: true });
    expect(doc.tokens).toEqual(Array.from(tokens.subarray(idx[2]!, idx[2]! + 100)));
    const docText = new TextDecoder().decode(Uint8Array.from(doc.tokens));
    expect(doc.text).toBe(docText);
    expect(
      embeddedDocuments()
        .slice(0, 4)
        .map(normalizeText)
        .some((t) => t.startsWith(docText)),
    ).toBe(true);
  });

  it('serves the web app, index.html for its client routes, and a clear 500 while the bundle is missing', async () => {
    for (const path of ['/', '/runs/abc', '/experiments', '/datasets']) {
      const r = await fetch(new URL(path, server.url));
      expect(r.status, path).toBe(200);
      expect(await r.text()).toContain('<title>nmoe viz</title>');
    }
    const js = await fetch(new URL('/assets/app.js', server.url));
    expect(js.headers.get('content-type')).toMatch(/javascript/);
    expect(await js.text()).toBe('console.log(1);');
    rmSync(join(webRoot, 'index.html'));
    const missing = await get<{ error: string }>('/');
    expect(missing.status).toBe(500);
    expect(missing.body.error).toMatch(/web app is not built: .*index\.html is missing\. Fix: run `npm run build:viz`/);
  });

  it('keeps a finished run attached between requests, and lets go of it once the registry says it runs again', async () => {
    const file = metricsPath(metricsDir, run, 0);
    expect((await get(`/api/series?run=${run}&tag=memory/max_alloc_gib`)).status).toBe(200); // a new answer: read, and left attached
    expect(await openForWriteInChild(file)).toMatch(/Could not set lock on file/);
    const reg = new Registry(experimentsDb);
    reg.startRun({ id: run, experimentId: 'tiny', config: {}, gitHash: null, gitDirty: null }); // as a resumed run does
    try {
      expect((await get(`/api/tags?run=${run}`)).status).toBe(200); // even an answer from the cache lets go of the files
      expect(await openForWriteInChild(file)).toBe('opened');
    } finally {
      reg.endRun(run, 'completed', { final_loss: finalLoss });
      reg.close();
    }
  });

  it('reads a run while nmoe train writes it; the run finishes and its file holds every step', async () => {
    const steps = 40;
    const known = new Set((await get<RunsResponse>('/api/runs')).body.runs.map((r) => r.run));
    const training = nmoeAsync(trainArgs(dir, steps));
    let exited = false;
    void training.done.then(() => (exited = true));
    let live: string | undefined;
    while (!live && !exited) {
      live = (await get<RunsResponse>('/api/runs')).body.runs.find(
        (r) => !known.has(r.run) && r.last_step !== null,
      )?.run;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(live, 'the new run appeared before it finished').toBeDefined();
    const seen: number[] = [];
    const lastSteps: number[] = [];
    while (!exited) {
      // As a page does: several reads of the run at once, each a query on the same attachment of its file.
      const since = seen.length ? `&since_step=${seen.at(-1)}` : '';
      const [r, ...others] = await Promise.all(
        [
          `/api/series?run=${live}&tag=train/loss${since}`,
          `/api/summary?run=${live}`,
          `/api/tags?run=${live}`,
          `/api/router?run=${live}`,
          `/api/series?run=${live}&tag=optimizer/lr`,
        ].map((path) => get<SeriesResponse>(path)),
      );
      for (const answer of [r!, ...others]) expect(answer.status, JSON.stringify(answer.body)).toBe(200);
      seen.push(...r!.body.series[0]!.points.map((p) => p.step));
      lastSteps.push(seen.at(-1) ?? 0);
      await new Promise((res) => setTimeout(res, 100));
    }
    const { code, out } = await training.done;
    expect(code, out).toBe(0);
    expect(new Set(lastSteps.filter((s) => s > 0 && s < steps)).size, 'last_step grew while training').toBeGreaterThan(
      1,
    );
    expect(seen).toEqual(Array.from({ length: seen.length }, (_, i) => i + 1)); // every step, once, in order
    const written = await readRows(metricsPath(metricsDir, live!, 0));
    expect(written.filter((r) => r.tag === 'train/loss').map((r) => r.step)).toEqual(
      Array.from({ length: steps }, (_, i) => i + 1),
    );
  });
});

describe('nmoe viz and nmoe bench viz on the command line', () => {
  it('serves until Ctrl-C, and says in one line what is wrong with a missing dir or a taken port', async () => {
    expect(nmoe(['viz', '--help']).out).toMatch(
      /Usage: nmoe viz \[options\][\s\S]*--metrics-dir <dir>[\s\S]*NMOE_METRICS_DIR/,
    );
    const missing = nmoe(['viz', '--metrics-dir', join(dir, 'nowhere')]);
    expect(missing.code).toBe(2);
    expect(missing.err.trim()).toMatch(
      /^nmoe: error: the metrics dir .*nowhere does not exist\. Fix: pass --metrics-dir/,
    );

    const viz = nmoeAsync([
      'viz',
      '--metrics-dir',
      metricsDir,
      '--experiments-db',
      experimentsDb,
      '--data-root',
      dataRoot,
      '--port',
      '0',
    ]);
    let out = '';
    viz.child.stdout.on('data', (d) => (out += d));
    while (!/http:\/\/\S+/.test(out)) await new Promise((r) => setTimeout(r, 20));
    const url = /http:\/\/\S+/.exec(out)![0];
    expect((await getJson(url, '/api/health')).body).toEqual({ ok: true });
    const taken = nmoe(['viz', '--metrics-dir', metricsDir, '--port', new URL(url).port]);
    expect(taken.code).toBe(2);
    expect(taken.err).toMatch(/cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)\. Fix: pick another with --port N/);
    viz.child.kill('SIGINT');
    expect((await viz.done).code).toBe(0);
  });

  it('stops at once, in one line, when --experiments-db is not a SQLite database', async () => {
    const junk = join(dir, 'not-a-db.db');
    writeFileSync(junk, 'this is not SQLite\n'.repeat(64));
    const viz = nmoeAsync(['viz', '--metrics-dir', metricsDir, '--experiments-db', junk, '--port', '0']);
    const deadline = setTimeout(() => viz.child.kill('SIGKILL'), 30_000); // a server that started anyway
    const r = await viz.done;
    clearTimeout(deadline);
    expect(r.signal, r.out).toBeNull();
    expect(r.code).toBe(2);
    expect(r.out.trim()).toBe(
      `nmoe: error: cannot open the experiments DB ${junk}: file is not a database. Fix: point it at the SQLite file \`nmoe train\` writes (experiments_db in the config; --db or --experiments-db here).`,
    );
  });

  it('bench viz times series requests on a synthetic run', () => {
    const r = nmoe(['bench', 'viz', '--steps', '1000', '--requests', '3', '--no-browser']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^synthetic run: 1,000 steps x 200 tags = 200,000 rows, written in [\d.]+ s$/m);
    expect(r.out).toMatch(
      /^\(a\) \/api\/series, 5 tags x 1,000 points -> 1000: first \(attaching the run\) \d+ ms, then median \d+ ms, p90 \d+ ms over 3 requests for other tags/m,
    );
  });
});
