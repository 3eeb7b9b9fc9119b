/**
 * `nmoe ckpt info|export` and `nmoe runs list|show` end to end, as child processes, on a real 2-step run; python3 +
 * numpy read the exported Hugging Face files (names, shapes, values, the shard index).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { DENSE_FILE, iterName, listSteps, rankFile } from '../src/checkpoint/layout.ts';
import { Registry, STALE_AFTER_S, liveStatus } from '../src/metrics/registry.ts';
import { RegistryReader } from '../src/viz/server/registry-read.ts';
import { readSafetensors } from '../src/checkpoint/safetensors.ts';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { trainTracked } from '../src/train/tracked.ts';
import type { TrainSummary } from '../src/train/trainer.ts';
import { pyReadSafetensors, sum64 } from './helpers/py-safetensors.ts';

const BIN = fileURLToPath(new URL('../bin/nmoe.js', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'nmoe-ckcli-'));
const ckpt = join(root, 'ckpt'),
  db = join(root, 'exp.db');

function nmoe(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    env: { ...process.env, NO_COLOR: '1', CI: '1' },
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

let run: TrainSummary;
beforeAll(async () => {
  const { config } = loadConfig(defaultConfigPath(), {
    env: {},
    overrides: [
      '--seq_len=32',
      '--batch_size=2',
      '--steps=2',
      '--checkpoint_every=1',
      `--checkpoint_dir=${ckpt}`,
      `--metrics_dir=${root}/m`,
      `--experiments_db=${db}`,
    ],
  });
  run = await trainTracked(config, new CpuBackend(), { start: () => {}, step: () => {}, log: () => {} });
});

describe('nmoe ckpt', () => {
  it('info lists steps, completeness, sizes and what resume loads; an incomplete step is named', () => {
    rmSync(join(ckpt, iterName(1), 'manifest.json'));
    const r = nmoe(['ckpt', 'info', ckpt]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^latest_checkpointed_iteration\.txt: 2$/m);
    expect(r.out).toMatch(/^iter_0000002 +step 2 +complete +[\d.]+ MB +world 1/m);
    expect(r.out).toMatch(/^iter_0000001 +step 1 +INCOMPLETE: no manifest\.json/m);
    expect(r.out).toMatch(/^ +rank_000\.safetensors +[\d.]+ MB$/m);
    expect(r.out).toMatch(/tokens 128 +run run_\d{8}_\d{6}_[0-9a-f]{8}_[0-9a-f]{4}/);
    expect(r.out).toMatch(/^resume loads step 2$/m);
    expect(nmoe(['ckpt', 'info', join(root, 'nope')]).code).toBe(2);
  });

  it('export --format hf writes DeepSeek-V3 names, transposed experts and config.json that python reads back', () => {
    const out = join(root, 'hf');
    const r = nmoe(['ckpt', 'export', '--format', 'hf', ckpt, out]);
    expect(r.code, r.err).toBe(0);
    const py = pyReadSafetensors(join(out, 'model.safetensors'));
    const dense = readSafetensors(join(ckpt, iterName(2), DENSE_FILE)).tensors;
    const experts = readSafetensors(join(ckpt, iterName(2), rankFile(0))).tensors;
    expect(Object.keys(py.tensors)).toHaveLength(dense.size + 3 * 3 * 8);
    const q = py.tensors['model.layers.2.self_attn.q_a_proj.weight']!;
    expect(q.shape).toEqual([32, 64]);
    expect(q.head).toEqual([...dense.get('blocks.2.attn.wq_a.weight')!.data.subarray(0, 4)]);
    expect(py.tensors['model.layers.1.mlp.gate.e_score_correction_bias']!.head).toEqual([
      ...dense.get('blocks.1.ffn.router.bias')!.data.subarray(0, 4),
    ]);
    expect(py.tensors['model.embed_tokens.weight']!.shape).toEqual([256, 64]);
    const w1 = experts.get('blocks.3.ffn.W1')!; // [8, 64 in, 64 out]: expert 5's column 0 is its gate_proj's row 0
    const g = py.tensors['model.layers.3.mlp.experts.5.gate_proj.weight']!;
    expect(g.head).toEqual([0, 1, 2, 3].map((i) => w1.data[5 * 64 * 64 + i * 64]));
    expect(g.sum).toBeCloseTo(sum64(w1.data.subarray(5 * 4096, 6 * 4096)), 5);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(cfg).toMatchObject({
      model_type: 'deepseek_v3',
      hidden_size: 64,
      n_routed_experts: 8,
      num_experts_per_tok: 2,
      first_k_dense_replace: 1,
      kv_lora_rank: 32,
    });
    expect(cfg.nmoe.differences.join(' ')).toMatch(/10\.667.*NeoX/s);
  });

  it('shards above --max-shard-mb with an index naming every tensor', () => {
    const out = join(root, 'hf-sharded');
    const r = nmoe(['ckpt', 'export', '--format', 'hf', '--max-shard-mb', '0.5', join(ckpt, iterName(2)), out]);
    expect(r.code, r.err).toBe(0);
    const index = JSON.parse(readFileSync(join(out, 'model.safetensors.index.json'), 'utf8'));
    const shards = [...new Set(Object.values(index.weight_map) as string[])].sort();
    expect(shards).toEqual([
      'model-00001-of-00004.safetensors',
      'model-00002-of-00004.safetensors',
      'model-00003-of-00004.safetensors',
      'model-00004-of-00004.safetensors',
    ]);
    const names = shards.flatMap((s) => Object.keys(pyReadSafetensors(join(out, s)).tensors));
    expect(names.sort()).toEqual(Object.keys(index.weight_map).sort());
    expect(nmoe(['ckpt', 'export', '--format', 'gguf', ckpt, out]).err).toMatch(/--format gguf is not supported/);
  });
});

describe('nmoe runs', () => {
  it('list and show print the registry', () => {
    const list = nmoe(['runs', 'list', '--db', db]);
    expect(list.code, list.err).toBe(0);
    expect(list.out).toMatch(
      new RegExp(`^${run.runId} +tiny +completed +\\S+ \\S+ +\\S+ \\S+ +loss \\d\\.\\d{4}, 2 steps$`, 'm'),
    );
    const show = nmoe(['runs', 'show', run.runId, '--db', db]);
    expect(show.out).toMatch(/^status +completed$/m);
    expect(show.out).toMatch(/"lr_dense": 0\.01/);
    expect(nmoe(['runs', 'show', 'nope', '--db', db]).code).toBe(2);
  });

  it('a run killed with SIGKILL reads as stale, in runs list and on the dashboard', async () => {
    const dir = join(root, 'sigkill');
    const child = spawn(
      process.execPath,
      [
        BIN,
        'train',
        '--seq_len=32',
        '--batch_size=2',
        '--steps=1000',
        `--checkpoint_dir=${dir}`,
        `--metrics_dir=${root}/m`,
        `--experiments_db=${db}`,
      ],
      { stdio: 'ignore', env: { ...process.env, CI: '1' } },
    );
    const exited = new Promise((r) => child.on('exit', r));
    const row = () => {
      const reg = new Registry(db, { readonly: true });
      try {
        return reg.listRuns().find((r) => r.pid === child.pid);
      } finally {
        reg.close();
      }
    };
    while (!row() && child.exitCode === null) await new Promise((r) => setTimeout(r, 50));
    expect(row()).toMatchObject({
      status: 'running',
      host: hostname(),
      heartbeat_at: expect.stringMatching(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/),
    });
    child.kill('SIGKILL');
    await exited;
    const { id, experiment_id: experiment, status } = row()!;
    expect(status).toBe('stale');
    const list = nmoe(['runs', 'list', '--db', db, '--status', 'stale']);
    expect(list.code, list.err).toBe(0);
    expect(list.out.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`^${id} +${experiment} +stale `))]);
    expect(nmoe(['runs', 'show', id, '--db', db]).out).toMatch(
      new RegExp(
        `^trainer +pid ${child.pid} on ${hostname()}, last heartbeat .* UTC \\(gone: the run was killed without ending its row\\)$`,
        'm',
      ),
    );
    const dashboard = new RegistryReader(db);
    expect(dashboard.run(id)!.status).toBe('stale');
    expect(dashboard.experiments().find((e) => e.id === experiment)!.by_status).toMatchObject({ stale: 1 });
  });

  it('a row from another host is stale once its heartbeat is older than STALE_AFTER_S', () => {
    const now = Date.parse('2026-12-07T12:00:00Z');
    const beat = (s: number) => new Date(now - s * 1000).toISOString().replace('T', ' ').slice(0, 19);
    expect(liveStatus('running', 1, 'elsewhere', beat(STALE_AFTER_S - 5), now)).toBe('running');
    expect(liveStatus('running', 1, 'elsewhere', beat(STALE_AFTER_S + 5), now)).toBe('stale');
    expect(liveStatus('running', null, null, null, now)).toBe('running'); // the reference's rows: no way to tell
    expect(liveStatus('completed', 1, hostname(), null, now)).toBe('completed');
  });

  it('a file that is not an experiments DB is one line and exit 2, never an internal error', () => {
    const junk = join(root, 'junk.db');
    writeFileSync(junk, 'this is not SQLite\n'.repeat(64));
    const r = nmoe(['runs', 'list', '--db', junk]);
    expect(r.code).toBe(2);
    expect(r.err.trim()).toBe(
      `nmoe: error: cannot open the experiments DB ${junk}: file is not a database. Fix: point it at the SQLite file \`nmoe train\` writes (experiments_db in the config; --db or --experiments-db here).`,
    );
  });
});

describe('nmoe train, stopped and resumed', () => {
  it('SIGTERM saves a final checkpoint and marks the run killed; --resume continues the same run to completion', async () => {
    const dir = join(root, 'term');
    const args = [
      'train',
      '--seq_len=32',
      '--batch_size=2',
      '--checkpoint_every=1000',
      '--log_every=1000',
      `--checkpoint_dir=${dir}`,
      `--metrics_dir=${root}/m`,
      `--experiments_db=${db}`,
    ];
    const child = spawn(process.execPath, [BIN, ...args, '--steps=1000'], {
      env: { ...process.env, NO_COLOR: '1', CI: '1' },
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (!child.killed && /^step +1\/1000 /m.test(out)) child.kill('SIGTERM'); // once: a second signal exits at once
    });
    const code = await new Promise((r) => child.on('exit', r));
    expect(code, out).toBe(0);
    const stopped = Number(/\[ckpt\] saved step=(\d+)/.exec(out)![1]);
    expect(out).toMatch(new RegExp(`^stopped: ${stopped} steps`, 'm'));
    expect(listSteps(dir).map((s) => [s.step, s.complete])).toEqual([[stopped, true]]);
    const runId = /"run_id": "(\S+)"/.exec(readFileSync(join(dir, iterName(stopped), 'train_state.json'), 'utf8'))![1]!;
    let reg = new Registry(db, { readonly: true });
    expect(reg.getRun(runId)).toMatchObject({ status: 'killed' });
    reg.close();

    const resumed = nmoe([...args, `--steps=${stopped + 2}`, '--resume']);
    expect(resumed.code, resumed.err).toBe(0);
    expect(resumed.out).toContain(`resumed run ${runId} from step ${stopped}`);
    reg = new Registry(db, { readonly: true });
    expect(JSON.parse(reg.getRun(runId)!.results_json!)).toMatchObject({
      steps_completed: stopped + 2,
      start_step: stopped,
    });
    expect(reg.getRun(runId)!.status).toBe('completed');
    reg.close();
  });
});
