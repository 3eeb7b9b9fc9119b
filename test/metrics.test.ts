/**
 * Metrics and the run registry after real short runs: every tag of the reference's catalogue that nmoe writes is in
 * the rank's DuckDB file with the logged values; a reader in another process can open the file mid-run and sees the
 * rows written so far, and a reader holding the file only delays the writer, which loses nothing; the registry
 * records completed, killed (after a final checkpoint) and failed runs, and is in WAL mode with a busy timeout, so a
 * reader holding a read transaction neither blocks a run's writes nor sees them half done.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DuckDBInstance } from '@duckdb/node-api';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { TRACKER, iterName } from '../src/checkpoint/layout.ts';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { MetricsWriter, metricsPath } from '../src/metrics/duckdb-writer.ts';
import { logTags } from '../src/metrics/tags.ts';
import { Registry } from '../src/metrics/registry.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { trainTracked } from '../src/train/tracked.ts';
import type { LogRecord, TrainEvents } from '../src/metrics/records.ts';

const BIN = fileURLToPath(new URL('../bin/nmoe.js', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'nmoe-metrics-'));

function setup(name: string, extra: string[] = []) {
  const dir = join(root, name);
  const { config } = loadConfig(defaultConfigPath(), {
    env: {},
    overrides: [
      '--seq_len=32',
      '--batch_size=2',
      '--warmup_steps=2',
      '--log_every=2',
      '--steps=4',
      `--checkpoint_dir=${dir}/ckpt`,
      `--metrics_dir=${dir}/metrics`,
      `--experiments_db=${join(root, 'experiments.db')}`,
      ...extra,
    ],
  });
  const logs: LogRecord[] = [];
  const events: TrainEvents = { start: () => {}, step: () => {}, log: (r) => logs.push(r) };
  return { config, logs, events };
}

async function readMetrics(path: string) {
  const db = await DuckDBInstance.create(path, { access_mode: 'READ_ONLY' });
  const conn = await db.connect();
  const rows = (
    await conn.runAndReadAll('SELECT run, tag, step, ts_ms, value FROM metrics ORDER BY tag, step')
  ).getRowObjectsJS();
  const pk = (
    await conn.runAndReadAll(
      `SELECT constraint_text FROM duckdb_constraints() WHERE table_name = 'metrics' AND constraint_type = 'PRIMARY KEY'`,
    )
  ).getRowObjectsJS();
  conn.closeSync();
  db.closeSync();
  return { rows: rows as { run: string; tag: string; step: number; ts_ms: bigint; value: number }[], pk };
}

const CATALOGUE = [
  'train/loss',
  'optimizer/lr',
  'throughput/tokens_per_s_gpu',
  'throughput/ms_per_step',
  'efficiency/tflops',
  'throughput/loader_wait_ms',
  'memory/current_alloc_gib',
  'memory/max_alloc_gib',
  ...[0, 1, 2].flatMap((l) =>
    ['cv', 'entropy', 'experts_active', 'bias_range', 'max_load'].map((k) => `router/layer_0${l}/${k}`),
  ),
  ...['mean_cv', 'std_cv', 'mean_entropy', 'min_entropy', 'dead_experts_count', 'experts_active_mean'].map(
    (k) => `router_agg/${k}`,
  ),
  'throughput/r0/tokens_per_s',
  'efficiency/bf16_tflops',
  'efficiency/fp8_tflops',
  ...[
    'fwd_total',
    'bwd_total',
    'opt_step',
    'zero2_reduce_scatter',
    'zero2_all_gather',
    'loss',
    'dense_mlp_fwd',
    'dense_mlp_bwd',
    'head_fwd',
    'head_bwd',
  ].map((k) => `time_ms/r0/${k}`),
];

/**
 * Opens `path` read-only in another process (retrying while a write holds it), prints the (step, value) rows of tag
 * `loss`, holds the file for `holdMs`, then exits. DuckDB's locks are per process, so only another process shows
 * what a dashboard sees.
 */
function readInChild(path: string, holdMs = 0) {
  const code = `import { DuckDBInstance } from '@duckdb/node-api';
    let db;
    for (const t0 = Date.now(); !db; ) {
      try { db = await DuckDBInstance.create(${JSON.stringify(path)}, { access_mode: 'READ_ONLY' }); }
      catch (e) { if (Date.now() - t0 > 10000 || !/lock/i.test(e.message)) throw e; await new Promise((r) => setTimeout(r, 10)); }
    }
    const conn = await db.connect();
    const rows = (await conn.runAndReadAll("SELECT step, value FROM metrics WHERE tag = 'loss' ORDER BY step")).getRows();
    console.log(JSON.stringify(rows));
    await new Promise((r) => setTimeout(r, ${holdMs}));
    conn.closeSync();
    db.closeSync();`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<void>((resolve, reject) =>
    child.on('exit', (c) => (c ? reject(new Error(`reader failed: ${err}`)) : resolve())),
  );
  const rows = new Promise<[number, number][]>((resolve, reject) => {
    child.stdout.once('data', (d) => resolve(JSON.parse(String(d))));
    exited.catch(reject);
  });
  return { rows, exited };
}

describe('metrics writer: readable while training', () => {
  const loss = (step: number) => ({ loss: step / 2 });

  it('holds its file only while writing: a reader between flushes sees every row flushed so far', async () => {
    const w = await MetricsWriter.open(join(root, 'live'), 'run_a', 0);
    for (const step of [1, 2, 3]) w.record(step, loss(step));
    await w.flush();
    expect(await readInChild(w.path).rows).toEqual([
      [1, 0.5],
      [2, 1],
      [3, 1.5],
    ]);
    w.record(4, loss(4));
    await w.flush();
    expect((await readInChild(w.path).rows).map((r) => r[0])).toEqual([1, 2, 3, 4]);
    await w.close();
  });

  it('waits for a reader that holds the file without blocking the caller, and loses or reorders nothing', async () => {
    const w = await MetricsWriter.open(join(root, 'held'), 'run_b', 0);
    w.record(1, loss(1));
    await w.flush();
    const holdMs = 1500;
    const reader = readInChild(w.path, holdMs);
    expect(await reader.rows).toEqual([[1, 0.5]]);
    const held = performance.now();
    let slowestCall = 0;
    for (let step = 2; step <= 10; step++) {
      const t = performance.now();
      w.record(step, loss(step));
      void w.flush();
      slowestCall = Math.max(slowestCall, performance.now() - t);
      await new Promise((r) => setTimeout(r, 50));
    }
    w.record(3, { loss: 99 }); // a replayed step overwrites the earlier row, as after a resume
    await w.flush();
    expect(performance.now() - held).toBeGreaterThan(holdMs - 100); // the write waited for the reader
    expect(slowestCall).toBeLessThan(20);
    await reader.exited;
    await w.close();
    const rows = await readInChild(w.path).rows;
    expect(rows).toEqual(Array.from({ length: 10 }, (_, i) => [i + 1, i + 1 === 3 ? 99 : (i + 1) / 2]));
  });

  it('close() gives up after its timeout with an error naming the file and the process that holds it', async () => {
    const w = await MetricsWriter.open(join(root, 'stuck'), 'run_c', 0, { closeTimeoutMs: 300 });
    w.record(1, loss(1));
    await w.flush();
    const reader = readInChild(w.path, 3000);
    await reader.rows;
    w.record(2, loss(2));
    w.record(3, loss(3));
    await expect(w.close()).rejects.toThrow(
      /the metrics of steps 2\.\.3 were not written: .*rank_0\.duckdb stayed locked by .*\(PID \d+\) for 0\.3 s\. Fix: close/,
    );
    await reader.exited;
  });
});

describe('metrics and run registry', () => {
  it('writes the catalogue to rank_0.duckdb with the logged values', async () => {
    const { config, logs, events } = setup('ok');
    const s = await trainTracked(config, new CpuBackend(), events);
    const { rows, pk } = await readMetrics(metricsPath(config.metrics_dir, s.runId, 0));
    expect(pk[0]!.constraint_text).toBe('PRIMARY KEY(run, tag, step)');
    const tags = new Set(rows.map((r) => r.tag));
    for (const tag of CATALOGUE) expect(tags, tag).toContain(tag);
    expect(tags.has('gpu_agg/total_power_w')).toBe(false); // CPU run: no GPU tags
    expect(tags.has('efficiency/mfu')).toBe(false); // nor MFU: a CPU has no known peak
    expect(logTags({ ...logs[0]!, tflops: 494.5 }, 0, 989)['efficiency/mfu']).toBe(0.5); // where the peak is known: MFU
    expect(rows.every((r) => r.run === s.runId)).toBe(true);
    const loss = rows.filter((r) => r.tag === 'train/loss');
    expect(loss.map((r) => [r.step, r.value])).toEqual(logs.map((l) => [l.step, l.loss]));
    expect(loss.map((r) => r.step)).toEqual([1, 2, 4]);
    const fwd = rows.filter((r) => r.tag === 'time_ms/r0/fwd_total');
    expect(fwd.every((r) => r.value > 0)).toBe(true);
    const active = rows.find((r) => r.tag === 'router/layer_01/experts_active' && r.step === 4)!;
    expect(active.value).toBe(logs[2]!.router[1]!.experts_active);

    const reg = new Registry(config.experiments_db, { readonly: true });
    const row = reg.getRun(s.runId)!;
    reg.close();
    expect(row).toMatchObject({
      experiment_id: 'tiny',
      status: 'completed',
      git_hash: expect.stringMatching(/^[0-9a-f]{40}$/),
    });
    expect(JSON.parse(row.results_json!)).toMatchObject({
      final_loss: s.finalLoss,
      tokens_seen: 256,
      steps_completed: 4,
    });
    expect(JSON.parse(row.config_json).lr_dense).toBe(0.01);
    expect(row.ended_at).not.toBeNull();
  });

  it('marks a signalled run killed after its final checkpoint, and a crash failed with the error', async () => {
    const killed = setup('killed', ['--steps=50', '--checkpoint_every=100']);
    const abort = new AbortController();
    killed.events.step = (r) => r.step === 2 && abort.abort();
    const s = await trainTracked(killed.config, new CpuBackend(), killed.events, abort.signal);
    expect(s.steps).toBe(2);
    expect(existsSync(join(killed.config.checkpoint_dir, iterName(2), 'manifest.json'))).toBe(true);

    const crashed = setup('crashed');
    crashed.events.step = (r) => {
      if (r.step === 3) throw new Error('disk on fire');
    };
    await expect(trainTracked(crashed.config, new CpuBackend(), crashed.events)).rejects.toThrow('disk on fire');
    expect(existsSync(join(crashed.config.checkpoint_dir, TRACKER))).toBe(false);

    const reg = new Registry(killed.config.experiments_db, { readonly: true });
    expect(reg.getRun(s.runId)).toMatchObject({ status: 'killed' });
    expect(JSON.parse(reg.getRun(s.runId)!.results_json!)).toMatchObject({ steps_completed: 2 });
    const failed = reg.listRuns({ status: 'failed' });
    reg.close();
    expect(failed).toHaveLength(1);
    expect(JSON.parse(failed[0]!.results_json!)).toEqual({ error: 'disk on fire' });
  });
});

describe('run registry: readers never block or corrupt a run', () => {
  it('opens in WAL mode with a busy timeout', () => {
    const path = join(root, 'wal.db');
    const reg = new Registry(path);
    expect(reg.db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(reg.db.pragma('busy_timeout', { simple: true })).toBeGreaterThan(0);
    reg.close();
    const ro = new Registry(path, { readonly: true });
    expect(ro.db.pragma('busy_timeout', { simple: true })).toBeGreaterThan(0);
    ro.close();
    const other = new Database(path, { readonly: true }); // WAL is a property of the file, not of nmoe's connection
    expect(other.pragma('journal_mode', { simple: true })).toBe('wal');
    other.close();
  });

  it('a reader holding a read transaction does not block `nmoe train` from recording its run, and sees a consistent snapshot', () => {
    const db = join(root, 'concurrent.db');
    const reg = new Registry(db);
    reg.startRun({ id: 'earlier', experimentId: 'tiny', config: {}, gitHash: null, gitDirty: false });
    reg.endRun('earlier', 'completed', { final_loss: 1 });
    reg.close();

    const reader = new Database(db, { readonly: true });
    const rows = () =>
      reader.prepare('SELECT id, status FROM runs ORDER BY started_at, id').all() as { id: string; status: string }[];
    reader.exec('BEGIN');
    const before = rows(); // the read transaction takes its snapshot here and holds it while the run writes
    expect(before).toEqual([{ id: 'earlier', status: 'completed' }]);
    const dir = join(root, 'concurrent');
    const run = spawnSync(
      process.execPath,
      [
        BIN,
        'train',
        '--steps=2',
        '--seq_len=32',
        '--batch_size=2',
        `--checkpoint_dir=${dir}/ckpt`,
        `--metrics_dir=${dir}/metrics`,
        `--experiments_db=${db}`,
      ],
      { encoding: 'utf8', env: { ...process.env, CI: '1', NO_COLOR: '1' }, timeout: 60_000 },
    );
    expect(run.status, run.stderr).toBe(0);
    expect(rows()).toEqual(before);
    reader.exec('COMMIT');

    const after = rows();
    expect(after).toEqual([
      { id: 'earlier', status: 'completed' },
      { id: expect.stringMatching(/^run_/), status: 'completed' },
    ]);
    expect(
      JSON.parse(
        (reader.prepare('SELECT results_json FROM runs WHERE id = ?').get(after[1]!.id) as { results_json: string })
          .results_json,
      ),
    ).toMatchObject({ steps_completed: 2 });
    expect(reader.pragma('integrity_check', { simple: true })).toBe('ok');
    reader.close();
  });
});
