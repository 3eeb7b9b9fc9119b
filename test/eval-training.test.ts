/**
 * Evals and validation inside `nmoe train`, on the embedded default: an eval every 2 steps writes the reference's
 * eval tags to the run's DuckDB file and its one line, and leaves every training loss bit for bit as a run without
 * it; a tasks file that names missing data stops the run before its first step. Validation on held-out shards writes
 * val/loss, equal to the loss of the saved weights on those batches computed through Transformer.forward, and
 * changes no training loss either. On 2 CPU ranks (`nmoe launch`) the eval runs on both in lockstep, rank 0 alone
 * prints it and writes its tags, the losses are again bit for bit those of a run without it, and `nmoe eval` of the
 * run's 2-rank checkpoint, on 1 rank and on 2, gives the scores of its last eval.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DuckDBInstance } from '@duckdb/node-api';
import { describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { createLoader } from '../src/data/loader/build.ts';
import { evalLine } from '../src/eval/in-training.ts';
import { loadModel } from '../src/eval/load-model.ts';
import { configSections } from '../src/config/sections.ts';
import { metricsPath } from '../src/metrics/duckdb-writer.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { trainTracked } from '../src/train/tracked.ts';
import type { TrainEvents } from '../src/metrics/records.ts';
import { BIN, writeNpy } from './fixtures/data/helpers.ts';
import { BASE_ENV, trainLosses } from './helpers/ranks.ts';

const FIXTURES = fileURLToPath(new URL('./fixtures/eval', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'nmoe-evaltrain-'));
const tasksFile = join(root, 'tasks.toml');
writeFileSync(
  tasksFile,
  `data_dir = ${JSON.stringify(FIXTURES)}
[[task]]
name = "COPA"
source = "hf:super_glue:copa:validation"
[[task]]
name = "GSM8K"
source = "hf:openai/gsm8k:main:test"
scorer = "span"
max_new_tokens = 8
`,
);

async function run(name: string, overrides: string[]) {
  const { config } = loadConfig(defaultConfigPath(), {
    env: {},
    overrides: [
      '--steps=4',
      '--seq_len=32',
      '--batch_size=2',
      '--log_every=1',
      `--checkpoint_dir=${join(root, name, 'ckpt')}`,
      `--metrics_dir=${join(root, 'metrics')}`,
      `--experiments_db=${join(root, 'runs.db')}`,
      `--eval_tasks_file=${tasksFile}`,
      '--eval_budget_max_examples=3',
      ...overrides,
    ],
  });
  const losses: number[] = [],
    lines: string[] = [];
  const events: TrainEvents = {
    start: () => {},
    step: (r) => losses.push(r.loss),
    log: () => {},
    eval: (e) => lines.push(evalLine(e.step, e.report)),
  };
  const summary = await trainTracked(config, new CpuBackend(), events);
  return { losses, lines, summary, config, metrics: join(root, 'metrics') };
}

/** The same run as `run`, on 2 CPU ranks through `nmoe launch`; its metrics in <root>/<name>/metrics. */
function launch2(name: string, overrides: string[]) {
  const metrics = join(root, name, 'metrics');
  const r = spawnSync(
    process.execPath,
    [
      BIN,
      'launch',
      '--nproc-per-node',
      '2',
      '--master-port',
      '0',
      '--',
      '--device=cpu',
      '--steps=4',
      '--seq_len=32',
      '--batch_size=2',
      '--log_every=1',
      `--checkpoint_dir=${join(root, name, 'ckpt')}`,
      `--metrics_dir=${metrics}`,
      `--experiments_db=${join(root, 'runs.db')}`,
      `--eval_tasks_file=${tasksFile}`,
      '--eval_budget_max_examples=3',
      ...overrides,
    ],
    { encoding: 'utf8', env: BASE_ENV, timeout: 170_000 },
  );
  return { code: r.status, out: r.stdout + r.stderr, metrics };
}

async function tags(path: string, prefix: string): Promise<{ tag: string; step: number; value: number }[]> {
  const db = await DuckDBInstance.create(path, { access_mode: 'READ_ONLY' });
  const conn = await db.connect();
  const rows = (
    await conn.runAndReadAll(`SELECT tag, step, value FROM metrics WHERE tag LIKE '${prefix}%' ORDER BY step, tag`)
  ).getRowObjectsJS();
  conn.closeSync();
  db.closeSync();
  return rows.map((r) => ({ tag: String(r.tag), step: Number(r.step), value: Number(r.value) }));
}

describe('in-training eval', () => {
  it('runs every eval_every steps, writes eval/task/<name>/{acc,centered,n} and eval/CORE, and changes no loss', async () => {
    const plain = await run('plain', ['--eval_every=0']);
    const withEval = await run('eval', ['--eval_every=2', '--eval_tasks=core']);
    expect(withEval.losses).toEqual(plain.losses);
    expect(withEval.lines).toHaveLength(2);
    expect(withEval.lines[0]).toMatch(
      /^\[eval\] step=2 COPA: acc=\d\.\d{3} centered=\d\.\d{3} n=3 \| GSM8K: acc=\d\.\d{3} centered=\d\.\d{3} n=3 \| CORE=\d\.\d{4} \([\d.]+ s\)$/,
    );
    const rows = await tags(metricsPath(withEval.metrics, withEval.summary.runId, 0), 'eval/');
    expect(rows.map((r) => `${r.step} ${r.tag}`)).toEqual(
      [2, 4].flatMap((s) => [
        `${s} eval/CORE`,
        `${s} eval/task/COPA/acc`,
        `${s} eval/task/COPA/centered`,
        `${s} eval/task/COPA/n`,
        `${s} eval/task/GSM8K/acc`,
        `${s} eval/task/GSM8K/centered`,
        `${s} eval/task/GSM8K/n`,
      ]),
    );
    expect(rows.find((r) => r.tag === 'eval/task/COPA/n')!.value).toBe(3);
  }, 120_000);

  it('on 2 CPU ranks runs on both in lockstep; rank 0 prints it and writes the tags; no loss changes; nmoe eval of the checkpoint agrees', async () => {
    const plain = launch2('r2-plain', ['--eval_every=0']);
    expect(plain.code, plain.out).toBe(0);
    const withEval = launch2('r2-eval', ['--eval_every=2', '--eval_tasks=core']);
    expect(withEval.code, withEval.out).toBe(0);
    expect(withEval.out).not.toMatch(/warning/);
    expect(await trainLosses(withEval.metrics)).toEqual(await trainLosses(plain.metrics));
    // 3 items a task: rank 0 scores two, rank 1 one and then a dummy round; the counts are summed.
    expect(
      withEval.out.match(/^\[eval\] step=\d COPA: acc=\d\.\d{3} centered=\d\.\d{3} n=3 \| GSM8K: .* n=3 \|/gm),
    ).toHaveLength(2);
    const run = readdirSync(withEval.metrics)[0]!;
    const rank0 = await tags(join(withEval.metrics, run, 'rank_0.duckdb'), 'eval/');
    expect(rank0.filter((r) => r.tag === 'eval/task/COPA/n').map((r) => [r.step, r.value])).toEqual([
      [2, 3],
      [4, 3],
    ]);
    expect(rank0).toHaveLength(14);
    expect(await tags(join(withEval.metrics, run, 'rank_1.duckdb'), 'eval/')).toEqual([]);
    // The run's 2-rank checkpoint of step 4, evaluated by `nmoe eval` on 1 and on 2 ranks: the scores of step 4's eval.
    const scores = (text: string) => text.match(/\b\w+: acc=\S+ centered=\S+ n=\d+/g);
    const atStep4 = scores(withEval.out.split('\n').find((l) => l.startsWith('[eval] step=4'))!);
    expect(atStep4).toHaveLength(2);
    const evalArgs = ['eval', join(root, 'r2-eval', 'ckpt'), `--tasks-file=${tasksFile}`, '--max-examples=3'];
    for (const launcher of [[], ['launch', '--nproc-per-node', '2', '--master-port', '0', '--']]) {
      const r = spawnSync(process.execPath, [BIN, ...launcher, ...evalArgs, '--tasks=core', '--device=cpu'], {
        encoding: 'utf8',
        env: BASE_ENV,
        timeout: 170_000,
      });
      expect(r.status, r.stderr).toBe(0);
      expect(scores(r.stdout)).toEqual(atStep4);
    }
  }, 300_000);

  it('a task whose data is missing stops the run before its first step', async () => {
    await expect(
      run('missing', ['--eval_every=2', '--eval_tasks=COPA', `--eval_tasks_file=${join(root, 'nope.toml')}`]),
    ).rejects.toThrow(/tasks file .*nope\.toml cannot be read/);
  });
});

describe('validation loss', () => {
  it("writes val/loss every validation_every steps: the loss of that step's weights on the held-out batches; no training loss changes", async () => {
    const dir = join(root, 'heldout');
    mkdirSync(dir);
    // Held-out bytes: text that is not in the training corpus, documents ended by EOS (0).
    const text = 'It was a bright cold day in April, and the clocks were striking thirteen.\0'.repeat(6);
    writeNpy(join(dir, 'val-000.npy'), Uint32Array.from(Buffer.from(text, 'latin1')));
    const plain = await run('val-plain', []);
    const validated = await run('val', [
      '--validation_enabled',
      `--validation_data_path=${dir}`,
      '--validation_every=2',
      '--validation_steps=2',
    ]);
    expect(validated.losses).toEqual(plain.losses);
    const rows = await tags(metricsPath(validated.metrics, validated.summary.runId, 0), 'val/');
    expect(rows.map((r) => `${r.step} ${r.tag}`)).toEqual(['2 val/loss', '4 val/loss']);
    // The last step's weights (its checkpoint) on the same two batches, through the training forward.
    const cpu = new CpuBackend();
    const { model } = await loadModel(join(root, 'val', 'ckpt'), cpu);
    const loader = createLoader({ ...configSections(validated.config).loader, data_path: dir, steps: 2 }, 0, 1, {
      warn: () => {},
    });
    let sum = 0,
      count = 0;
    for (let i = 0; i < 2; i++) {
      const b = loader.next();
      const fwd = model.forward(
        cpu.upload(b.inputs, [b.inputs.length], 'i32'),
        cpu.upload(b.targets, [b.targets.length], 'i32'),
        b.localBatch,
        { grad: false },
      );
      const n = b.targets.filter((t) => t !== 0).length;
      sum += (await cpu.read(fwd.loss))[0]! * n;
      count += n;
    }
    expect(rows[1]!.value).toBeCloseTo(sum / count, 5);
  }, 120_000);

  it('validation_enabled without validation_data_path is a config error naming both', () => {
    expect(() => loadConfig(defaultConfigPath(), { env: {}, overrides: ['--validation_enabled'] })).toThrow(
      /validation_enabled = true needs validation_data_path, the held-out shards .*Fix: set validation_data_path/,
    );
  });
});
