/**
 * Checkpoints and exact resume on the CPU backend: N steps straight against k steps + resume (bit-identical losses
 * and final files; with AdamW and with optimizer = "muon"), a real SIGKILL mid-run then resume, a step killed
 * mid-write (made by hand, and by a real SIGKILL while `nmoe train` writes it) skipped with a warning, retention,
 * and the refusal of a changed config (naming the fields). python3 + numpy read the files. (Resuming on another
 * number of ranks is tested in dist-cpu.test.ts.)
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  renameSync,
  watch,
  writeFileSync,
} from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { Checkpointer } from '../src/checkpoint/checkpointer.ts';
import { DENSE_FILE, STATE_FILE, TRACKER, iterName, listSteps, rankFile } from '../src/checkpoint/layout.ts';
import { LOCK_FILE } from '../src/checkpoint/lock.ts';
import { readSafetensors } from '../src/checkpoint/safetensors.ts';
import type { Snapshot, TrainState } from '../src/checkpoint/state.ts';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { Registry } from '../src/metrics/registry.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { type TrainSummary, train } from '../src/train/trainer.ts';
import { gitInfo } from '../src/util/version.ts';
import { pyReadSafetensors, sum64 } from './helpers/py-safetensors.ts';

const BIN = fileURLToPath(new URL('../bin/nmoe.js', import.meta.url));
const QUICK = ['--seq_len=32', '--batch_size=2', '--warmup_steps=2', '--log_every=100', '--checkpoint_every=2'];
const N = 6;
const root = mkdtempSync(join(tmpdir(), 'nmoe-ckpt-'));

function cfgArgs(dir: string, extra: string[] = []): string[] {
  return [
    ...QUICK,
    `--checkpoint_dir=${dir}`,
    `--metrics_dir=${join(root, 'metrics')}`,
    `--experiments_db=${join(root, 'exp.db')}`,
    ...extra,
  ];
}

async function run(dir: string, steps: number, extra: string[] = []) {
  const { config } = loadConfig(defaultConfigPath(), {
    env: {},
    overrides: cfgArgs(dir, [`--steps=${steps}`, ...extra]),
  });
  const losses: number[] = [],
    warnings: string[] = [];
  const summary: TrainSummary = await train(config, new CpuBackend(), {
    start: () => {},
    step: (r) => losses.push(r.loss),
    log: () => {},
    warn: (m) => warnings.push(m),
  });
  return { losses, warnings, summary };
}

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    env: { ...process.env, CI: '1', NO_COLOR: '1' },
    timeout: 60_000,
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/**
 * Runs `nmoe train` with a checkpoint every step and SIGKILLs it at the first file event inside a step directory
 * created after a complete step (the save is then under way: a temp file is being written or renamed in). Returns
 * the killed step and what its directory held, or null when the kill came too late (that step had completed, or
 * the step is past N).
 */
async function killDuringSave(dir: string): Promise<{ dir: string; step: number; left: string[] } | null> {
  mkdirSync(dir, { recursive: true });
  const child = spawn(process.execPath, [BIN, 'train', ...cfgArgs(dir, ['--steps=1000', '--checkpoint_every=1'])], {
    stdio: 'ignore',
    env: { ...process.env, CI: '1' },
  });
  const exited = new Promise((r) => child.on('exit', r));
  const kill = () => child.kill('SIGKILL');
  const watchers = [
    watch(dir, (_, name) => {
      const step = /^iter_(\d+)$/.exec(name ?? '')?.[1];
      if (step === undefined || watchers.length > 1 || !existsSync(join(dir, TRACKER))) return;
      if (Number(step) <= Number(readFileSync(join(dir, TRACKER), 'utf8'))) return; // retention removing an old step
      watchers.push(watch(join(dir, name!), kill));
    }),
  ];
  const deadline = setTimeout(kill, 60_000); // a child that never saves a second step still ends
  await exited;
  clearTimeout(deadline);
  for (const w of watchers) w.close();
  const [newest] = listSteps(dir);
  if (!newest || newest.complete || newest.step > N) return null; // resuming to N must train again
  return { dir, step: newest.step, left: readdirSync(newest.dir) };
}

/** sha256 of the two safetensors files of a step: equal hashes mean byte-identical weights and optimizer state. */
const stepBytes = (dir: string, step: number) =>
  [DENSE_FILE, rankFile(0)].map((f) =>
    createHash('sha256')
      .update(readFileSync(join(dir, iterName(step), f)))
      .digest('hex'),
  );

/** What the reference trainer leaves in a step: pickles and a manifest without per-file sizes. */
function referenceStep(base: string, step: number): void {
  const dir = join(base, iterName(step));
  mkdirSync(dir, { recursive: true });
  for (const f of ['rd.pt', 'dp_rank_000.pt']) writeFileSync(join(dir, f), "the reference trainer's pickle");
  writeFileSync(
    join(dir, 'manifest.json'),
    JSON.stringify({ step, world: 1, dp_count: 1, bytes_total: 62, git_sha: null, files: ['rd.pt', 'dp_rank_000.pt'] }),
  );
}

let straight: { losses: number[]; dir: string };

beforeAll(async () => {
  const dir = join(root, 'straight');
  straight = { losses: (await run(dir, N)).losses, dir };
});

describe('checkpoints', () => {
  it('writes the reference layout with complete manifests, the tracker last, and keeps the newest N', async () => {
    const dir = join(root, 'retain');
    await run(dir, N, ['--checkpoint_every=1', '--checkpoint_keep_last_n=2']);
    expect(readdirSync(dir).sort()).toEqual([iterName(5), iterName(6), TRACKER]);
    expect(readFileSync(join(dir, TRACKER), 'utf8')).toBe('6\n');
    const [latest] = listSteps(dir);
    expect(latest!.complete).toBe(true);
    expect(latest!.manifest!.files).toEqual([DENSE_FILE, STATE_FILE, rankFile(0)]);
    const state = JSON.parse(readFileSync(join(dir, iterName(6), STATE_FILE), 'utf8'));
    expect(state).toMatchObject({ step: 6, tokens_seen: 6 * 64, world: 1, rng: { optimizer_step: 6, seed: 42 } });
    expect(state.loader.global_sequence_index).toBe(12);
    expect(state.config.lr_dense).toBe(0.01);
    expect(state.config_fingerprint).toMatch(/^[0-9a-f]{64}$/);
    // The embedded corpus is one fixed plan; shards would give the sha256 of their list.
    expect(state.plan_hash).toBe('embedded');
    expect(state.loader.plan_hash).toBe(state.plan_hash);
    expect(state.nmoe_version).toBe(JSON.parse(readFileSync('package.json', 'utf8')).version);
    expect(state.git_sha).toMatch(/^[0-9a-f]{40}$/);
    expect(state.git_sha).toBe(gitInfo().sha);
    expect(latest!.manifest).toMatchObject({ git_sha: state.git_sha, nmoe_version: state.nmoe_version });
  });

  it('python3 reads the checkpoint files: names, shapes and values agree with nmoe', () => {
    const path = join(straight.dir, iterName(N), rankFile(0));
    const ours = readSafetensors(path).tensors;
    const py = pyReadSafetensors(path);
    expect(Object.keys(py.tensors).sort()).toEqual([...ours.keys()].sort());
    for (const name of ['blocks.1.ffn.W1', 'optim.exp_avg.embedding.weight', 'optim.exp_avg_sq.blocks.3.ffn.W2']) {
      const t = ours.get(name)!;
      expect(py.tensors[name]!.shape).toEqual(t.shape);
      expect(py.tensors[name]!.head).toEqual([...t.data.subarray(0, 4)]);
      expect(py.tensors[name]!.sum).toBeCloseTo(sum64(t.data), 6);
    }
    expect(ours.get('blocks.1.ffn.W1')!.shape).toEqual([8, 64, 64]);
    const dense = pyReadSafetensors(join(straight.dir, iterName(N), DENSE_FILE));
    expect(dense.tensors['blocks.1.ffn.router.bias']!.shape).toEqual([8]);
    expect(dense.metadata).toEqual({ format: 'nmoe-checkpoint', step: String(N) });
  });
});

describe('checkpointer queue', () => {
  /** A step's snapshot whose every value is the step, so each file shows which save it came from. */
  const snapshot = (step: number): Snapshot => ({
    step,
    dense: [{ name: 'w', dtype: 'F32', shape: [1024], data: new Float32Array(1024).fill(step) }],
    rank: [{ name: 'e', dtype: 'F32', shape: [4, 1024], data: new Float32Array(4096).fill(step) }],
    state: { format: 'nmoe-train-state', version: 1, step, git_sha: null } as TrainState, // the writer only serialises it
  });

  it('drops nothing: with 2 saves pending, the next caller waits until the oldest is written', async () => {
    const base = join(root, 'queue');
    const events: string[] = [];
    const ckpt = new Checkpointer({
      base,
      rank: 0,
      world: 1,
      keepLast: 10,
      onSaved: (step) => events.push(`written ${step}`),
    });
    for (let step = 1; step <= 6; step++) {
      await ckpt.save(snapshot(step));
      events.push(`queued ${step}`);
    }
    await ckpt.close();
    expect(events).toEqual([
      'queued 1',
      'queued 2',
      'written 1',
      'queued 3',
      'written 2',
      'queued 4',
      'written 3',
      'queued 5',
      'written 4',
      'queued 6',
      'written 5',
      'written 6',
    ]);
    expect(listSteps(base).map((s) => [s.step, s.complete])).toEqual([6, 5, 4, 3, 2, 1].map((s) => [s, true]));
    expect(readFileSync(join(base, TRACKER), 'utf8')).toBe('6\n');
    for (let step = 1; step <= 6; step++)
      expect(readSafetensors(join(base, iterName(step), rankFile(0))).tensors.get('e')!.data[4095]).toBe(step);
  });

  it('writes a whole step while the main thread is busy, so the first save is as quick as the rest', async () => {
    // The training loop holds the main thread for a whole step at a time (the CPU backend computes on it). A save
    // whose file operations each waited for the loop to yield took seconds; the checkpoint thread needs no yield.
    const base = join(root, 'busy');
    const ckpt = new Checkpointer({ base, rank: 0, world: 1, keepLast: 10 });
    const tracker = () => (existsSync(join(base, TRACKER)) ? readFileSync(join(base, TRACKER), 'utf8') : '');
    for (const step of [1, 2]) {
      await ckpt.save(snapshot(step));
      const t0 = Date.now();
      while (tracker() !== `${step}\n` && Date.now() - t0 < 15_000); // busy, as a training step is
      expect(tracker(), `step ${step} was not on disk after 15 s of a busy main thread`).toBe(`${step}\n`);
    }
    await ckpt.close();
    const [latest] = listSteps(base);
    for (const f of latest!.manifest!.files)
      expect(latest!.manifest!.sha256![f]).toBe(
        createHash('sha256')
          .update(readFileSync(join(latest!.dir, f)))
          .digest('hex'),
      );
  });

  it('retention and the writer never delete or write into a step folder nmoe did not write', async () => {
    const base = join(root, 'foreign-retain');
    referenceStep(base, 1);
    const ckpt = new Checkpointer({ base, rank: 0, world: 1, keepLast: 1 });
    for (const step of [2, 3]) await ckpt.save(snapshot(step));
    await ckpt.close();
    expect(readdirSync(base).sort()).toEqual([iterName(1), iterName(3), TRACKER]); // step 2 is nmoe's: removed
    const again = new Checkpointer({ base, rank: 0, world: 1, keepLast: 1 });
    await again.save(snapshot(1));
    await expect(again.close()).rejects.toThrow(`${join(base, iterName(1))} holds a step nmoe did not write`);
    expect(readdirSync(join(base, iterName(1))).sort()).toEqual(['dp_rank_000.pt', 'manifest.json', 'rd.pt']);
    expect(readFileSync(join(base, iterName(1), 'rd.pt'), 'utf8')).toBe("the reference trainer's pickle");
  });
});

describe('exact resume', () => {
  it('k steps, stop, resume to N: bit-identical losses and final files; an incomplete newer step is skipped', async () => {
    const dir = join(root, 'resume');
    const first = await run(dir, 3);
    expect(first.losses).toEqual(straight.losses.slice(0, 3));
    // What a kill in the middle of saving step 5 leaves: one file renamed in, another still a temp file, no manifest.
    mkdirSync(join(dir, iterName(5)));
    copyFileSync(join(dir, iterName(3), rankFile(0)), join(dir, iterName(5), rankFile(0)));
    writeFileSync(join(dir, iterName(5), `.${DENSE_FILE}.tmp-1-x`), 'partial');
    const second = await run(dir, N, ['--resume']);
    expect(second.warnings).toEqual([
      expect.stringMatching(/skipping incomplete checkpoint .*iter_0000005: no manifest\.json/),
    ]);
    expect(second.summary.startStep).toBe(3);
    expect(second.summary.runId).toBe(first.summary.runId);
    expect(second.losses).toEqual(straight.losses.slice(3));
    expect(stepBytes(dir, N)).toEqual(stepBytes(straight.dir, N));
  });

  it('with optimizer = "muon": k steps, stop, resume to N: bit-identical losses and final files', async () => {
    const muon = ['--optimizer=muon'];
    const whole = await run(join(root, 'muon-straight'), N, muon);
    const dir = join(root, 'muon-resume');
    expect((await run(dir, N / 2, muon)).losses).toEqual(whole.losses.slice(0, N / 2));
    const second = await run(dir, N, [...muon, '--resume']);
    expect(second.summary.startStep).toBe(N / 2);
    expect(second.losses).toEqual(whole.losses.slice(N / 2));
    expect(stepBytes(dir, N)).toEqual(stepBytes(join(root, 'muon-straight'), N));
    const saved = readSafetensors(join(dir, iterName(N), rankFile(0))).tensors;
    expect(saved.has('optim.momentum.blocks.0.attn.wq_a.weight')).toBe(true);
    expect(saved.has('optim.exp_avg.blocks.0.attn.wq_a.weight')).toBe(false); // Muon's, not AdamW's
    expect(whole.losses).not.toEqual(straight.losses); // Muon, not AdamW, made these losses
  });

  it('SIGKILL mid-run, then resume from the last complete checkpoint: bit-identical', async () => {
    const dir = join(root, 'killed');
    const child = spawn(process.execPath, [BIN, 'train', ...cfgArgs(dir, ['--steps=1000'])], {
      stdio: 'ignore',
      env: { ...process.env, CI: '1' },
    });
    const exited = new Promise((r) => child.on('exit', r));
    while (!existsSync(join(dir, TRACKER)) && child.exitCode === null) await new Promise((r) => setTimeout(r, 10));
    expect(child.exitCode, 'the child exited before its first checkpoint').toBeNull();
    child.kill('SIGKILL');
    await exited;
    const resumed = await run(dir, N, ['--resume']);
    const k = resumed.summary.startStep;
    expect(k).toBeGreaterThanOrEqual(2);
    expect(k).toBeLessThan(N);
    expect(resumed.losses).toEqual(straight.losses.slice(k));
    expect(stepBytes(dir, N)).toEqual(stepBytes(straight.dir, N));
  });

  it('SIGKILL while a checkpoint is being written: that step is incomplete, skipped with a warning, the previous one resumes', async () => {
    let torn: { dir: string; step: number; left: string[] } | null = null;
    for (let attempt = 1; attempt <= 5 && !torn; attempt++) torn = await killDuringSave(join(root, `torn-${attempt}`));
    if (!torn) throw new Error('5 kills in a row missed the checkpoint writes');
    const { dir, step } = torn;
    expect(torn.left.length, 'the kill landed after a file operation of the save began').toBeGreaterThan(0);
    expect(readFileSync(join(dir, TRACKER), 'utf8')).toBe(`${step - 1}\n`);

    const info = cli(['ckpt', 'info', dir]);
    expect(info.code, info.err).toBe(0);
    expect(info.out).toMatch(new RegExp(`^${iterName(step)} +step ${step} +INCOMPLETE: `, 'm'));
    expect(info.out).toMatch(new RegExp(`^${iterName(step - 1)} +step ${step - 1} +complete `, 'm'));
    expect(info.out).toMatch(new RegExp(`^resume loads step ${step - 1}$`, 'm'));

    const resumed = cli(['train', ...cfgArgs(dir, [`--steps=${N}`, '--resume'])]);
    expect(resumed.code, resumed.err).toBe(0);
    expect(resumed.out).toMatch(new RegExp(`^warning: skipping incomplete checkpoint .*${iterName(step)}: `, 'm'));
    expect(resumed.out).toMatch(new RegExp(`^resumed run \\S+ from step ${step - 1} `, 'm'));
    expect(resumed.out).toMatch(new RegExp(`^done: steps ${step}-${N} \\(resumed from ${step - 1}\\)`, 'm'));
    expect(stepBytes(dir, N)).toEqual(stepBytes(straight.dir, N));
  });

  it('a checkpoint damaged in place (sizes intact) is refused, naming it and the fix; moved aside, the step before resumes', async () => {
    const dir = join(root, 'damaged');
    cpSync(straight.dir, dir, { recursive: true });
    const newest = join(dir, iterName(N));
    const state = join(newest, STATE_FILE);
    const original = readFileSync(state);
    writeFileSync(state, Buffer.alloc(original.length, 'x')); // same size: the manifest still calls the step complete
    const damaged = new RegExp(
      `checkpoint ${newest} is damaged: .*Fix: move ${newest} aside; resume then loads the step before it\\.`,
    );
    await expect(run(dir, N + 1, ['--resume'])).rejects.toThrow(damaged);
    writeFileSync(state, original);
    const dense = join(newest, DENSE_FILE);
    const bytes = readFileSync(dense);
    bytes.fill(0x7b, 8, 24); // the JSON header's first bytes
    writeFileSync(dense, bytes);
    await expect(run(dir, N + 1, ['--resume'])).rejects.toThrow(damaged);
    renameSync(newest, join(root, 'damaged-step'));
    const resumed = await run(dir, N, ['--resume']);
    expect(resumed.summary.startStep).toBe(N - 2);
    expect(resumed.losses).toEqual(straight.losses.slice(N - 2));
  });

  it('refuses a changed training config, naming the fields, but allows steps, log_every and cadence', async () => {
    await expect(run(straight.dir, N + 1, ['--resume', '--lr_dense=0.02', '--seed=7'])).rejects.toThrow(
      /was saved with a different config: seed \(42 -> 7\), lr_dense \(0\.01 -> 0\.02\)|lr_dense \(0\.01 -> 0\.02\).*seed \(42 -> 7\)/,
    );
    const more = await run(straight.dir, N + 1, ['--resume', '--log_every=3', '--checkpoint_every=5']);
    expect(more.summary.startStep).toBe(N);
    expect(more.losses).toHaveLength(1);
  });
});

describe('nothing lost', () => {
  it("a fresh run moves another run's checkpoints aside, intact, where resume and retention never look", async () => {
    const dir = join(root, 'reused');
    const first = await run(dir, 4);
    const hashes = (d: string) =>
      readdirSync(d, { recursive: true })
        .map(String)
        .filter((f) => f.endsWith('.safetensors'))
        .sort()
        .map((f) => [
          f,
          createHash('sha256')
            .update(readFileSync(join(d, f)))
            .digest('hex'),
        ]);
    const before = hashes(dir);
    const fresh = await run(dir, 2, ['--checkpoint_keep_last_n=1']);
    const aside = join(dir, 'previous', first.summary.runId);
    expect(fresh.warnings).toEqual([
      `checkpoint_dir held run ${first.summary.runId}'s checkpoints (newest: step 4); moved them to ${aside}, so this fresh run cannot overwrite them`,
    ]);
    expect(fresh.losses).toEqual(straight.losses.slice(0, 2)); // a fresh start, not a resume
    expect(hashes(aside)).toEqual(before);
    expect(readFileSync(join(aside, TRACKER), 'utf8')).toBe('4\n');
    expect(readdirSync(dir).sort()).toEqual([iterName(2), TRACKER, 'previous']);
    const resumed = await run(dir, 3, ['--resume']);
    expect(resumed.summary.startStep).toBe(2);
    expect(resumed.summary.runId).toBe(fresh.summary.runId);
  });

  it('--resume with nothing to resume says so; resuming a run that already reached its steps trains nothing and leaves its registry row as it was', () => {
    const dir = join(root, 'finished');
    const first = cli(['train', ...cfgArgs(dir, ['--steps=2', '--resume'])]);
    expect(first.code, first.err).toBe(0);
    expect(first.out).toMatch(new RegExp(`^nothing to resume in ${dir}; starting fresh$`, 'm'));
    const again = cli(['train', ...cfgArgs(dir, ['--steps=2', '--resume'])]);
    expect(again.code, again.err).toBe(0);
    const id = /^nothing to train: run (\S+) is at step 2 of 2\. Fix: raise --steps to train further\.$/m.exec(
      again.out,
    )?.[1];
    expect(id, again.out).toBeDefined();
    const registry = new Registry(join(root, 'exp.db'), { readonly: true });
    const row = registry.getRun(id!)!;
    registry.close();
    expect(row.status).toBe('completed');
    expect(JSON.parse(row.results_json!)).toMatchObject({ steps_completed: 2, final_loss: expect.any(Number) });
  });

  it('steps nmoe did not write move aside, with the tracker that names them, and are never written into, resume on or off', async () => {
    for (const resume of ['--resume', '--no-resume']) {
      const dir = join(root, `foreign${resume}`);
      referenceStep(dir, 2);
      mkdirSync(join(dir, iterName(6)));
      writeFileSync(join(dir, iterName(6), 'manifest.json'), JSON.stringify({ step: 6, files: ['model.pt'] })); // no sizes
      writeFileSync(join(dir, TRACKER), '6\n');
      const r = await run(dir, 3, [resume, '--checkpoint_keep_last_n=1']);
      expect(r.summary.startStep).toBe(0);
      const moved = r.warnings.find((w) => w.startsWith('checkpoint_dir held 2 step folder(s) nmoe did not write'));
      const aside = /moved them to (\S+),/.exec(moved ?? '')?.[1];
      expect(moved, r.warnings.join('\n')).toBe(
        `checkpoint_dir held 2 step folder(s) nmoe did not write (${iterName(2)}: holds dp_rank_000.pt, rd.pt, which nmoe never writes); moved them to ${aside}, so this run never deletes or writes into them`,
      );
      expect(aside).toMatch(new RegExp(`^${dir}/previous/foreign_\\d{8}_\\d{6}$`));
      expect(readdirSync(aside!).sort()).toEqual([iterName(2), iterName(6), TRACKER]);
      expect(readFileSync(join(aside!, iterName(2), 'rd.pt'), 'utf8')).toBe("the reference trainer's pickle");
      expect(readdirSync(dir).sort()).toEqual([iterName(3), TRACKER, 'previous']);
      expect(listSteps(dir)[0]).toMatchObject({ step: 3, complete: true });
    }
  });

  it('a flipped weight (size and format intact) fails its checksum: resume refuses the step, ckpt info --verify names it', async () => {
    const dir = join(root, 'flipped');
    cpSync(straight.dir, dir, { recursive: true });
    const intact = cli(['ckpt', 'info', '--verify', dir]);
    expect(intact.code, intact.err).toBe(0);
    expect(intact.out.match(/^ {2}verify: every file matches its sha256$/gm)).toHaveLength(3);
    const [top] = listSteps(dir); // straight.dir may have been resumed past N by now
    const newest = top!.dir;
    const file = join(newest, rankFile(0));
    const bytes = readFileSync(file);
    bytes[bytes.length - 1]! ^= 1; // the low mantissa bit of the last value: still a valid file, one weight off
    writeFileSync(file, bytes);
    expect(readSafetensors(file).tensors.size).toBeGreaterThan(0);
    await expect(run(dir, top!.step + 1, ['--resume'])).rejects.toThrow(
      new RegExp(
        `^checkpoint ${newest} is damaged: rank_000\\.safetensors does not match its checksum \\(sha256 [0-9a-f]{16}…, the manifest records [0-9a-f]{16}…\\)\\. Fix: move ${newest} aside; resume then loads the step before it\\.$`,
      ),
    );
    const damaged = cli(['ckpt', 'info', '--verify', dir]);
    expect(damaged.code).toBe(2);
    expect(damaged.out).toMatch(
      new RegExp(
        `^${iterName(top!.step)} .*\\n(?: .*\\n)*? {2}verify: DAMAGED: rank_000\\.safetensors does not match its checksum`,
        'm',
      ),
    );
    expect(damaged.err.trim()).toBe(
      `nmoe: error: ${iterName(top!.step)} in ${dir} is damaged (see verify above). Fix: move it out of ${dir}; resume then loads the newest step that verifies.`,
    );
  });

  it("a second trainer on a checkpoint_dir in use is refused, naming the holder; a killed holder's lock is taken over", async () => {
    const dir = join(root, 'locked');
    const first = spawn(process.execPath, [BIN, 'train', ...cfgArgs(dir, ['--steps=1000'])], {
      stdio: 'ignore',
      env: { ...process.env, CI: '1' },
    });
    const exited = new Promise((r) => first.on('exit', r));
    while (!existsSync(join(dir, TRACKER)) && first.exitCode === null) await new Promise((r) => setTimeout(r, 10));
    const holder = JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8'));
    expect(holder).toMatchObject({ pid: first.pid, host: hostname() });
    for (const resume of ['--resume', '--no-resume']) {
      const second = cli(['train', ...cfgArgs(dir, ['--steps=2', resume])]);
      expect(second.code).toBe(2);
      expect(second.err).toContain(
        `nmoe: error: checkpoint_dir ${dir} is in use by another nmoe train (pid ${first.pid} on host ${hostname()}, since ${holder.started}), and a second trainer would move`,
      );
      expect(second.out).not.toMatch(/moved them to/);
    }
    expect(readdirSync(dir)).not.toContain('previous');
    first.kill('SIGKILL');
    await exited;
    expect(existsSync(join(dir, LOCK_FILE))).toBe(true); // SIGKILL runs nothing: the lock is left, stale
    const k = Number(readFileSync(join(dir, TRACKER), 'utf8'));
    const resumed = await run(dir, k + 1, ['--resume']);
    expect(resumed.summary).toMatchObject({ startStep: k, steps: k + 1 });
    expect(existsSync(join(dir, LOCK_FILE)), 'released at the end of the run').toBe(false);
  });

  it('a checkpoint_dir or metrics_dir that cannot be written stops the run before its first step, naming the key', () => {
    const file = join(root, 'a-file');
    writeFileSync(file, '');
    for (const key of ['checkpoint_dir', 'metrics_dir']) {
      const r = cli(['train', ...cfgArgs(join(root, `bad-${key}`), ['--steps=2', `--${key}=${join(file, 'sub')}`])]);
      expect(r.code).toBe(2);
      expect(r.err).toContain(
        `nmoe: error: ${key} = "${join(file, 'sub')}" cannot be written (ENOTDIR). Fix: point ${key} at a writable folder (--${key}=PATH).`,
      );
      expect(r.out + r.err).not.toMatch(/^step /m);
    }
  });
});
