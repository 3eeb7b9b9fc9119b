/**
 * The dashboard end to end, as a researcher uses it: real runs from `nmoe train`, a dataset from `nmoe data prep`,
 * a flow from `nmoe data prep-mixture` and a HYDRA sidecar,
 * the real server (startVizServer) serving the committed bundle in viz-dist/, and Debian's Chromium driven by
 * playwright-core. Every page must render the real data (charts with points, numbers equal to the API's and to the
 * trainer's own log) without a console error, and a page open on a training run must show its new steps live.
 * Screenshots of every page go to test-artifacts/viz/.
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type {
  FlowResponse,
  GpuResponse,
  RouterResponse,
  RunsResponse,
  SeriesResponse,
  TagsResponse,
} from '../src/viz/api.ts';
import { embeddedDocuments } from '../src/data/embedded-corpus.ts';
import { normalizeText } from '../src/data/text.ts';
import { startVizServer, type VizServer } from '../src/viz/server/server.ts';
import { nmoeAsync, removeTempDirs, tempDir, writeJsonl } from './fixtures/data/helpers.ts';
import { FLOW_SEQ_LEN, SIDECAR_GRADES, flowFixture, writeSidecar } from './helpers/viz-data.ts';

const CHROMIUM = '/usr/bin/chromium';
const SCREENSHOTS = fileURLToPath(new URL('../test-artifacts/viz/', import.meta.url));
const STEPS = 12;
/** A second, shorter run to compare with. */
const OTHER_STEPS = 8;
const QUICK = ['--seq_len=32', '--batch_size=4', '--warmup_steps=2', '--log_every=1'];
/** The main run also evaluates COPA (3 fixture items) every EVAL_EVERY steps. */
const EVAL_EVERY = 6;
const EVAL_FIXTURES = fileURLToPath(new URL('./fixtures/eval', import.meta.url));
const haveChromium = existsSync(CHROMIUM);

const INSTALL = 'apt-get install -y --no-install-recommends chromium';
if (!haveChromium && process.env.CI) {
  describe('nmoe viz in a browser', () => {
    it('needs Chromium', () => {
      throw new Error(`${CHROMIUM} is missing: ${INSTALL} (.ci/run does this as root)`);
    });
  });
} else if (!haveChromium) {
  console.warn(`test/viz-e2e.test.ts: skipped, no ${CHROMIUM}. To run the browser tests: ${INSTALL}`);
}

describe.skipIf(!haveChromium)('nmoe viz in a browser', () => {
  let dir: string;
  const metricsDir = () => join(dir, 'metrics');
  const trainArgs = (steps: number, name: string) => [
    'train',
    `--steps=${steps}`,
    ...QUICK,
    `--metrics_dir=${metricsDir()}`,
    `--experiments_db=${join(dir, 'experiments.db')}`,
    `--checkpoint_dir=${join(dir, name)}`,
  ];
  const docs = embeddedDocuments()
    .slice(0, 40)
    .map((text, i) => ({ id: `ch${i}`, text }));
  let server: VizServer;
  let browser: Browser;
  let run: string;
  let otherRun: string;
  let trainLog: string;

  const api = async <T>(path: string): Promise<T> => {
    const res = await fetch(new URL(path, server.url));
    expect(res.status, path).toBe(200);
    return (await res.json()) as T;
  };

  /** Waits for the page's test hook: <html data-ready="true"> once its data is on screen. */
  const ready = (page: Page) => page.waitForSelector('html[data-ready="true"]', { state: 'attached', timeout: 20_000 });

  /**
   * Opens `path` in a fresh tab; returns the tab, its errors from now on (console errors, uncaught exceptions, and
   * failed requests with their URL, which the console reports without one) and the ms until ready.
   */
  async function open(path: string) {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    const errors: string[] = [];
    page.on('console', (m) => void (m.type() === 'error' && errors.push(m.text())));
    page.on('pageerror', (e) => void errors.push(e.message));
    page.on('response', (r) => void (r.status() >= 400 && errors.push(`${r.status()} ${r.url()}`)));
    const t0 = performance.now();
    await page.goto(new URL(path, server.url).href);
    await ready(page);
    return { page, errors, ms: Math.round(performance.now() - t0) };
  }

  const chart = (page: Page, name: string) => page.locator(`[data-chart="${name}"]`);
  const points = async (page: Page, name: string) => Number(await chart(page, name).getAttribute('data-points'));
  const lastStep = async (page: Page, name: string) =>
    Number((await chart(page, name).getAttribute('data-last-step')) || -1);
  const shoot = (page: Page, name: string) =>
    page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });

  beforeAll(async () => {
    dir = tempDir('viz');
    writeJsonl(join(dir, 'book.jsonl'), docs);
    writeFileSync(
      join(dir, 'tasks.toml'),
      `data_dir = ${JSON.stringify(EVAL_FIXTURES)}\n[[task]]\nname = "COPA"\nsource = "hf:super_glue:copa:validation"\n`,
    );
    const evalArgs = [
      `--eval_every=${EVAL_EVERY}`,
      '--eval_tasks=COPA',
      `--eval_tasks_file=${join(dir, 'tasks.toml')}`,
      '--eval_budget_max_examples=3',
    ];
    const prepArgs = [
      'data',
      'prep',
      '--source',
      'jsonl',
      '--paths',
      join(dir, 'book.jsonl'),
      '-o',
      join(dir, 'data', 'moby'),
      '--name',
      'moby',
      '--tokenizer',
      'bytes',
      '--num-shards',
      '2',
      '-j',
      '1',
    ];
    const flow = flowFixture(dir);
    const [trained, other, prepared, tinyPrepared, hugePrepared] = await Promise.all(
      [
        [...trainArgs(STEPS, 'ckpt-a'), ...evalArgs],
        trainArgs(OTHER_STEPS, 'ckpt-b'),
        prepArgs,
        flow.prepArgs('tiny', join(dir, 'data')),
        flow.prepArgs('huge', join(dir, 'data')),
      ].map((a) => nmoeAsync(a).done),
    );
    for (const r of [trained, other, prepared, tinyPrepared, hugePrepared]) expect(r!.code, r!.out).toBe(0);
    writeSidecar(join(dir, 'data', 'graded', 'web.jsonl'));
    trainLog = trained!.out;
    server = await startVizServer({
      metricsDir: metricsDir(),
      experimentsDb: join(dir, 'experiments.db'),
      dataRoot: join(dir, 'data'),
      flowTomls: {
        mixtureToml: flow.mixtureToml,
        flowProfilesToml: flow.flowProfilesToml,
        seqLen: FLOW_SEQ_LEN,
        activeParamsB: null,
      },
      host: '127.0.0.1',
      port: 0,
    });
    const { runs } = await api<RunsResponse>('/api/runs');
    run = runs.find((r) => r.last_step === STEPS)!.run;
    otherRun = runs.find((r) => r.last_step === OTHER_STEPS)!.run;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
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
    mkdirSync(SCREENSHOTS, { recursive: true });
  }, 170_000);

  afterAll(async () => {
    await browser?.close();
    await server?.close();
    removeTempDirs();
  });

  it('overview: the run table shows the run with its last loss, equal to the API and the trainer log; a click opens it', async () => {
    const { page, errors, ms } = await open('/');
    console.log(`viz e2e: overview ready in ${ms} ms`);
    const row = page.locator(`tr[data-run="${run}"]`);
    await expect(row.count()).resolves.toBe(1);
    await expect(page.locator('[data-table="runs"] tbody tr').count()).resolves.toBe(2);

    const { series } = await api<SeriesResponse>(`/api/series?run=${run}&tag=train/loss&points=5000`);
    const lastLoss = series[0]!.points.at(-1)!;
    expect(lastLoss.step).toBe(STEPS);
    expect(Number(await row.locator('td[data-col="loss"]').getAttribute('title'))).toBe(lastLoss.value);
    const logged = new RegExp(`^step +${STEPS}/${STEPS} +loss (\\d+\\.\\d+)`, 'm').exec(trainLog)!;
    expect(lastLoss.value).toBeCloseTo(Number(logged[1]), 4);
    await expect(row.textContent()).resolves.toContain('completed');
    await shoot(page, 'overview');

    await row.click();
    await page.waitForURL(`**/runs/${run}`);
    await ready(page);
    expect(await points(page, 'train/loss')).toBe(STEPS);
    expect(errors).toEqual([]);
  });

  it('run page: summary cards and charts of real points; a tag picked from the filter adds its chart', async () => {
    const { page, errors, ms } = await open(`/runs/${run}`);
    console.log(`viz e2e: run page ready in ${ms} ms`);
    for (const tag of ['train/loss', 'optimizer/lr', 'optimizer/grad_norm', 'throughput/tokens_per_s_gpu']) {
      expect(await points(page, tag), tag).toBe(STEPS);
      expect(await lastStep(page, tag), tag).toBe(STEPS);
    }
    const summary = page.locator('[data-card="train/loss"] .card-value');
    const { series } = await api<SeriesResponse>(`/api/series?run=${run}&tag=train/loss&since_step=${STEPS - 1}`);
    expect(Number(await summary.getAttribute('title'))).toBe(series[0]!.points[0]!.value);

    const { tags } = await api<TagsResponse>(`/api/tags?run=${run}`);
    expect(tags.length).toBeGreaterThan(40);
    await page.getByLabel('filter tags').fill('layer_01 cv');
    await page.locator('[data-list="tags"] label', { hasText: 'router/layer_01/cv' }).locator('input').check();
    await ready(page);
    await chart(page, 'router/layer_01/cv').waitFor();
    expect(await points(page, 'router/layer_01/cv')).toBe(STEPS);
    expect(new URL(page.url()).searchParams.get('tags')).toContain('router/layer_01/cv');

    await page.getByLabel('log scale').check();
    await page.getByRole('slider', { name: 'smoothing' }).evaluate((el: HTMLInputElement) => {
      el.value = '0.6';
      el.dispatchEvent(new Event('input', { bubbles: true }));
    });
    expect(new URL(page.url()).searchParams.get('smooth')).toBe('0.6');
    expect(new URL(page.url()).searchParams.get('log')).toBe('1');
    expect(await points(page, 'train/loss')).toBe(STEPS);
    await shoot(page, 'run');
    expect(errors).toEqual([]);
  });

  it("run page: the eval charts (CORE and each task's accuracy) of a run that evaluated; the runs table's CORE column", async () => {
    const { page, errors } = await open(`/runs/${run}`);
    const section = page.locator('[data-section="eval"]');
    await expect(
      section.locator('[data-chart]').evaluateAll((els) => els.map((e) => e.getAttribute('data-chart'))),
    ).resolves.toEqual(['eval/CORE', 'eval/task/COPA/acc']);
    for (const tag of ['eval/CORE', 'eval/task/COPA/acc']) {
      expect(await points(page, tag), tag).toBe(STEPS / EVAL_EVERY);
      expect(await lastStep(page, tag), tag).toBe(STEPS);
    }
    expect(errors).toEqual([]);
    const other = await open(`/runs/${otherRun}`);
    await expect(other.page.locator('[data-section="eval"]').count()).resolves.toBe(0); // no eval, no section

    const { series } = await api<SeriesResponse>(`/api/series?run=${run}&tag=eval/CORE`);
    const core = series[0]!.points.at(-1)!.value;
    const { runs } = await api<RunsResponse>('/api/runs');
    expect(runs.find((r) => r.run === run)!.eval_core).toBe(core);
    expect(runs.find((r) => r.run === otherRun)!.eval_core).toBeNull();
    const overview = await open('/');
    expect(Number(await overview.page.locator(`tr[data-run="${run}"] td[data-col="core"]`).getAttribute('title'))).toBe(
      core,
    );
    await expect(overview.page.locator(`tr[data-run="${otherRun}"] td[data-col="core"]`).textContent()).resolves.toBe(
      '—',
    );
    await shoot(page, 'run-eval');
    expect([...other.errors, ...overview.errors]).toEqual([]);
  });

  it('run page: another run overlaid for comparison', async () => {
    const { page, errors } = await open(`/runs/${run}`);
    await page.locator('[data-list="runs"] label', { hasText: otherRun }).locator('input').check();
    await ready(page);
    expect(new URL(page.url()).searchParams.get('compare')).toBe(otherRun);
    expect(await points(page, 'train/loss')).toBe(STEPS + OTHER_STEPS);
    await expect(chart(page, 'train/loss').locator('.u-legend').textContent()).resolves.toContain(otherRun);
    await shoot(page, 'compare');
    expect(errors).toEqual([]);
  });

  it('router page: a heatmap per metric over every step, the latest values per layer and the dead-expert alerts', async () => {
    const { page, errors } = await open(`/router?run=${run}`);
    const router = await api<RouterResponse>(`/api/router?run=${run}`);
    expect(router.layers.length).toBe(3); // tiny: 4 layers, the first dense
    await expect(page.locator('[data-table="router-layers"] tbody tr').count()).resolves.toBe(3);
    for (const metric of ['max_load', 'cv', 'entropy', 'bias_range', 'experts_active']) {
      expect(await points(page, `router/${metric}`), metric).toBe(3 * STEPS);
      expect(await lastStep(page, `router/${metric}`), metric).toBe(STEPS);
    }
    await expect(page.locator('.alert').count()).resolves.toBe(router.alerts.length);
    await shoot(page, 'router');
    expect(errors).toEqual([]);
  });

  it('GPU page: the latest NVML reading and charts per GPU, or says the run had none', async () => {
    const { page, errors } = await open(`/gpu?run=${run}`);
    const gpu = await api<GpuResponse>(`/api/gpu?run=${run}`);
    if (gpu.gpus.length === 0) await expect(page.locator('[data-empty="gpu"]').count()).resolves.toBe(1);
    else {
      await expect(page.locator('[data-table="gpus"] tbody tr').count()).resolves.toBe(gpu.gpus.length);
      expect(await points(page, 'gpu/utilization_gpu')).toBeGreaterThan(0);
    }
    await shoot(page, 'gpu');
    expect(errors).toEqual([]);
  });

  it('experiments page: the registry experiment and its run', async () => {
    const { page, errors } = await open('/experiments');
    await expect(page.locator('[data-table="experiments"]').textContent()).resolves.toContain('tiny');
    await page.locator('[data-table="experiments"] tr', { hasText: 'tiny' }).click();
    await page.waitForURL(/experiment=/);
    await ready(page);
    await expect(page.locator('[data-table="experiment-runs"]').textContent()).resolves.toContain(run);
    await shoot(page, 'experiments');
    expect(errors).toEqual([]);
  });

  it('datasets page: folder, manifest, shard statistics, a token window and a document decoded back to its text', async () => {
    const { page, errors } = await open('/datasets');
    await page.locator('[data-table="listing"] a', { hasText: 'moby/' }).click();
    await page.waitForURL('**/datasets?path=moby');
    await ready(page);
    await expect(page.locator('[data-manifest]').textContent()).resolves.toContain('bytes');
    const shards = page.locator('[data-table="shards"] tbody a');
    expect(await shards.count()).toBe(2);
    await shards.first().click();
    await page.waitForURL(/shard=/);
    await ready(page);
    expect(Number(await page.locator('[data-tokens]').getAttribute('data-tokens'))).toBe(256);
    // Documents longer than the 4,096 tokens the page asks for arrive cut: compare a prefix.
    const text = (await page.locator('.doc-text').textContent())!.slice(0, 1000);
    expect(text.length).toBeGreaterThan(200);
    expect(docs.some((d) => normalizeText(d.text).startsWith(text))).toBe(true);
    await shoot(page, 'datasets');
    expect(errors).toEqual([]);
  });

  it('datasets page: a flow, a table per stage with quotas against tokens on disk; a graded set, its decisions and histograms', async () => {
    const { page, errors } = await open('/datasets?path=flows');
    await page.locator('[data-table="listing"] a', { hasText: 'tiny/' }).click();
    await page.waitForURL('**/datasets?path=flows%2Ftiny');
    await ready(page);
    const flow = await api<FlowResponse>('/api/datasets/flow?flow=tiny');
    await expect(page.locator('[data-flow="tiny"]').textContent()).resolves.toContain(flow.plan_hash);
    const rows = page.locator('[data-table="flow-stage-pretrain"] tbody tr');
    expect(await rows.count()).toBe(2);
    for (const [i, s] of flow.stages[0]!.sources.entries()) {
      const row = rows.nth(i);
      expect(await row.getAttribute('data-source')).toBe(s.id);
      expect(await row.getAttribute('data-state')).toBe('complete');
      const cells = await row.locator('td').allTextContents();
      expect(cells.slice(0, 5)).toEqual([
        s.id,
        `${(s.weight * 100).toFixed(1)}%`,
        s.quota_sequences.toLocaleString('en-US'),
        s.quota_tokens.toLocaleString('en-US'),
        s.tokens.toLocaleString('en-US'),
      ]);
    }
    await shoot(page, 'datasets-flow');
    // A flow whose inputs hold less than its quotas: each source is marked short.
    await page.goto(new URL('/datasets?path=flows/huge', server.url).href);
    await ready(page);
    const short = page.locator('[data-table="flow-stage-pretrain"] tbody tr[data-state="short"]');
    expect(await short.count()).toBe(2);
    await expect(short.first().locator('td.warn').textContent()).resolves.toMatch(/^short/);

    await page.goto(new URL('/datasets?path=graded', server.url).href);
    await ready(page);
    await page.locator('[data-table="listing"] a', { hasText: 'web.jsonl' }).click();
    await page.waitForURL(/graded=graded%2Fweb\.jsonl/);
    await ready(page);
    const count = (d: string) => page.locator(`[data-decision="${d}"]`).getAttribute('data-count');
    expect([await count('keep'), await count('band'), await count('drop')]).toEqual(['4', '2', '4']);
    const judged = SIDECAR_GRADES.filter((g) => g.aggregated !== null).length;
    expect(await points(page, 'hydra/aggregated')).toBe(judged);
    expect(await points(page, 'hydra/probe')).toBe(SIDECAR_GRADES.length);
    // uPlot drew the bars: the chart's canvas is there and has width.
    const canvas = chart(page, 'hydra/aggregated').locator('canvas');
    expect((await canvas.boundingBox())!.width).toBeGreaterThan(100);
    await shoot(page, 'datasets-graded');
    expect(errors).toEqual([]);
  });

  it('live: a page open on a training run draws its new steps as they are written, and the last one when it ends', async () => {
    const before = new Set(readdirSync(metricsDir()));
    const training = nmoeAsync(trainArgs(2000, 'ckpt-live'));
    try {
      let live: string | undefined;
      for (const t0 = Date.now(); !live; await new Promise((r) => setTimeout(r, 250))) {
        if (Date.now() - t0 > 60_000) throw new Error('the live run wrote no metrics in 60 s');
        const { runs } = await api<RunsResponse>('/api/runs');
        live = runs.find((r) => !before.has(r.run) && (r.last_step ?? 0) >= 1)?.run;
      }
      const { page, errors } = await open(`/runs/${live}`);
      await expect(page.locator('.live').count()).resolves.toBeGreaterThan(0);
      const lastStepAbove = (step: number) =>
        page.waitForFunction(
          ([sel, s]) => Number(document.querySelector(sel)?.getAttribute('data-last-step') || -1) > s,
          ['[data-chart="train/loss"]', step] as const,
          { timeout: 30_000 },
        );
      const first = await lastStep(page, 'train/loss');
      await lastStepAbove(first);
      const later = await lastStep(page, 'train/loss');
      expect(await points(page, 'train/loss')).toBeGreaterThanOrEqual(later);
      await shoot(page, 'live');

      // Stopped (Ctrl-C): the registry says killed, the page drops "live" and shows the last step the run wrote.
      training.child.kill('SIGINT');
      await training.done;
      const { tags } = await api<TagsResponse>(`/api/tags?run=${live}`);
      const final = tags.find((t) => t.tag === 'train/loss')!.last_step;
      await expect.poll(() => page.locator('.live').count(), { timeout: 20_000 }).toBe(0);
      await lastStepAbove(final - 1);
      expect(await lastStep(page, 'train/loss')).toBe(final);
      expect(errors, 'requests failed or errors were logged while the run was training').toEqual([]);
    } finally {
      if (training.child.exitCode === null) training.child.kill('SIGKILL');
    }
  });
});
