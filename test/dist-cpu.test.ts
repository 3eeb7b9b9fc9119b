/**
 * Multi-rank training on the CPU backend, in real processes over real TCP: the collectives and the RDEP exchange
 * (exact values, deterministic placement), a rank that dies mid-collective, first-step expert gradients against
 * the single-process run (bit for bit), and `nmoe launch` training on 2 and 4 ranks: the same losses as one
 * process (with AdamW and with distributed Muon), bitwise repeatable, exact resume on 2 ranks, and a 2-rank
 * checkpoint resumed on 1 and 4 ranks.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, readFileSync, readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN, nmoe, nmoeAsync, removeTempDirs, tempDir } from './fixtures/data/helpers.ts';
import { BASE_ENV, freePort, runRanks, trainLosses } from './helpers/ranks.ts';

afterAll(removeTempDirs);

const readJson = (path: string) => JSON.parse(readFileSync(path, 'utf8'));

/** The pid of the launcher's child process that runs `rank` (from /proc: its parent and its RANK variable). */
function rankPid(launcher: number, rank: number): number {
  for (const pid of readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number)) {
    try {
      const ppid = Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[1]);
      if (ppid === launcher && readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(`RANK=${rank}`))
        return pid;
    } catch {
      // the process ended while we looked
    }
  }
  throw new Error(`no child of ${launcher} runs rank ${rank}`);
}

/** Alive and not a zombie. */
function isRunning(pid: number): boolean {
  try {
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('CPU collectives and RDEP exchange (3 ranks)', () => {
  it('sum in rank order to bit-identical values, and place dispatched rows by expert, then source rank', async () => {
    const dir = tempDir('coll');
    const done = await runRanks(3, (r) => ['collectives', join(dir, `${r}.json`)]);
    for (const d of done) expect(d.code, d.out).toBe(0);
    const got = [0, 1, 2].map((r) => readJson(join(dir, `${r}.json`)));
    // allReduce: fp32 sums in rank order, identical on every rank.
    const f32 = (x: number) => Math.fround(x);
    const expected = Array.from({ length: 6 }, (_, i) =>
      [0, 1, 2].reduce((acc, r) => f32(acc + f32((i % 2 ? 1e8 : 1) * (r + 1) + i * 0.1)), 0),
    );
    for (const g of got) {
      expect(g.allReduce).toEqual(expected);
      expect(g.counts).toEqual([30, 33, 36, 39, 42, 45]);
      expect(g.allGather).toEqual([0, 0.5, 0, 1, 1.5, -1, 2, 2.5, -2]); // (JSON writes -0 as 0)
      expect(g.broadcast).toEqual([9, 10]);
      expect(g.returned).toEqual(g.sent); // combine brings every row back where it came from
    }
    got.forEach((g, r) =>
      expect(g.reduceScatter).toEqual([0, 1].map((i) => [0, 1, 2].reduce((a, s) => a + s * 100 + 2 * r + i, 0))),
    );
    // Rank r owns experts 2r, 2r+1; rank s sends (s + e) % 3 rows [s, e, i] to expert e.
    got.forEach((g, r) => {
      const rows: number[] = [];
      const offsets = [0];
      for (const e of [2 * r, 2 * r + 1]) {
        for (let s = 0; s < 3; s++) for (let i = 0; i < (s + e) % 3; i++) rows.push(s, e, i);
        offsets.push(rows.length / 3);
      }
      expect(g.offsets).toEqual(offsets);
      expect(g.dispatched).toEqual(rows);
    });
  });

  it('a rank that dies mid-collective stops the others at once, naming it', async () => {
    const dir = tempDir('die');
    const t0 = Date.now();
    const done = await runRanks(3, (r) => ['die-in-exchange', join(dir, `${r}.json`)]);
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(done[1]!.code).toBe(3);
    for (const r of [0, 2]) expect(readJson(join(dir, `${r}.json`)).error).toMatch(/rank 1 \(did its process exit\?\)/);
  });

  it('an expert exchange that a rank never joins fails after the timeout, naming that rank', async () => {
    const dir = tempDir('stall');
    const done = await runRanks(2, (r) => ['stall-in-exchange', join(dir, `${r}.json`)], { NMOE_COMM_TIMEOUT_S: '2' });
    expect(done[0]!.code, done[0]!.out).toBe(0);
    const { error, seconds } = readJson(join(dir, '0.json'));
    expect(error).toMatch(/waited 2 s for rank\(s\) 1/);
    expect(seconds).toBeLessThan(10);
  });
});

describe('expert parallelism', () => {
  it("each rank's first-step expert gradients equal its slice of the single-process run's, bit for bit", async () => {
    const dir = tempDir('grads');
    const cfg = ['configs/tiny.toml', '--device=cpu', '--batch_size=4', '--seq_len=64'];
    const [single] = await runRanks(1, () => ['grads', join(dir, 'single.json'), ...cfg]);
    expect(single!.code, single!.out).toBe(0);
    const ref = readJson(join(dir, 'single.json'));
    for (const world of [2, 4]) {
      const done = await runRanks(world, (r) => ['grads', join(dir, `w${world}r${r}.json`), ...cfg]);
      for (const d of done) expect(d.code, d.out).toBe(0);
      const parts = Array.from({ length: world }, (_, r) => readJson(join(dir, `w${world}r${r}.json`)));
      for (const [name, full] of Object.entries(ref.grads as Record<string, number[]>)) {
        const n = full.length / world;
        parts.forEach((p, r) =>
          expect(p.grads[name], `${name} on rank ${r} of ${world}`).toEqual(full.slice(r * n, (r + 1) * n)),
        );
      }
      // Each rank's loss is its share of the global mean; the shares add up to the single-process loss.
      expect(parts.reduce((a, p) => a + p.loss, 0)).toBeCloseTo(ref.loss, 5);
    }
  });
});

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

describe('nmoe launch on the CPU backend', () => {
  const steps = 50;
  const train = (dir: string, extra: string[] = []) => [
    'configs/tiny.toml',
    '--device=cpu',
    `--steps=${steps}`,
    '--batch_size=4',
    '--seq_len=32',
    '--log_every=1',
    '--checkpoint_every=0',
    `--metrics_dir=${join(dir, 'metrics')}`,
    `--experiments_db=${join(dir, 'runs.db')}`,
    `--checkpoint_dir=${join(dir, 'ckpt')}`,
    ...extra,
  ];
  const launch = (world: number, dir: string, extra: string[] = [], env: Record<string, string> = {}) =>
    nmoe(['launch', '--nproc-per-node', String(world), '--master-port', '0', '--', ...train(dir, extra)], {
      ...BASE_ENV,
      ...env,
    });

  /**
   * Relative loss tolerance against one process. fp32 on the CPU: only the order of the gradient sums differs. Muon's
   * is tighter: over its few steps the rounding stays near 1e-7, and 1e-4 would miss an owner that skips the gradient
   * all-gather (5e-5 off at step 6 on 2 ranks, measured 2026-12-08).
   */
  const tolerance = { adamw: 1e-4, muon: 1e-6 };

  // Muon runs fewer steps: Newton-Schulz is slow on the CPU.
  it.each([
    ['adamw', steps],
    ['muon', 10],
  ] as const)('%s: trains on 2 and 4 ranks with the single-process losses over %i steps', async (optimizer, n) => {
    const flags = [`--optimizer=${optimizer}`, `--steps=${n}`];
    const one = tempDir('one');
    const r1 = nmoe(['train', ...train(one, flags)]);
    expect(r1.code, r1.err).toBe(0);
    const ref = await trainLosses(join(one, 'metrics'));
    expect(ref).toHaveLength(n);
    for (const world of [2, 4]) {
      const dir = tempDir(`w${world}`);
      const r = launch(world, dir, flags);
      expect(r.code, r.out + r.err).toBe(0);
      expect(r.out).toMatch(new RegExp(`ranks ${world} \\(1 node\\(s\\)\\)`));
      const got = await trainLosses(join(dir, 'metrics'));
      got.forEach((l, i) =>
        expect(Math.abs(l - ref[i]!) / ref[i]!, `step ${i + 1} on ${world} ranks`).toBeLessThan(tolerance[optimizer]),
      );
      expect(readdirSync(join(dir, 'metrics', readdirSync(join(dir, 'metrics'))[0]!)).sort()).toEqual(
        Array.from({ length: world }, (_, r) => `rank_${r}.duckdb`),
      );
    }
  });

  it('is bitwise repeatable (also with ZeRO-2 reduce-scatter chunks of 256), and resumes exactly on 2 ranks', async () => {
    const a = tempDir('straight-a'),
      b = tempDir('straight-b'),
      resumed = tempDir('resumed');
    const six = ['--steps=6', '--checkpoint_every=3'];
    expect(launch(2, a, six).code).toBe(0);
    expect(launch(2, b, six, { NMOE_ZERO2_RS_CHUNK_MB: '0.001' }).code).toBe(0); // 256-element chunks: same sums
    expect(launch(2, resumed, ['--steps=3', '--checkpoint_every=3']).code).toBe(0);
    const again = launch(2, resumed, [...six, '--resume']);
    expect(again.code, again.out + again.err).toBe(0);
    expect(again.out).toMatch(/resumed run \S+ from step 3/);
    expect(await trainLosses(join(a, 'metrics'))).toEqual(await trainLosses(join(b, 'metrics')));
    for (const f of ['dense.safetensors', 'rank_000.safetensors', 'rank_001.safetensors']) {
      const want = sha(join(a, 'ckpt', 'iter_0000006', f));
      expect(sha(join(b, 'ckpt', 'iter_0000006', f)), `${f}: a rerun`).toBe(want);
      expect(sha(join(resumed, 'ckpt', 'iter_0000006', f)), `${f}: stop and resume`).toBe(want);
    }
  });

  it.each(['adamw', 'muon'] as const)(
    '%s: resumes a 2-rank checkpoint on 1 and on 4 ranks (experts and optimizer state resharded), continuing the same losses',
    async (optimizer) => {
      const straight = tempDir('reshard-straight'),
        saved = tempDir('reshard-saved');
      const six = ['--steps=6', '--checkpoint_every=3', `--optimizer=${optimizer}`];
      expect(launch(2, straight, six).code).toBe(0);
      expect(launch(2, saved, ['--steps=3', '--checkpoint_every=3', `--optimizer=${optimizer}`]).code).toBe(0);
      const want = (await trainLosses(join(straight, 'metrics'))).slice(3);
      for (const world of [1, 4]) {
        const dir = tempDir(`reshard-${world}`);
        cpSync(join(saved, 'ckpt'), join(dir, 'ckpt'), { recursive: true });
        const r =
          world === 1 ? nmoe(['train', ...train(dir, [...six, '--resume'])]) : launch(world, dir, [...six, '--resume']);
        expect(r.code, r.out + r.err).toBe(0);
        expect(r.out).toMatch(/resumed run \S+ from step 3/);
        const got = await trainLosses(join(dir, 'metrics'));
        expect(got).toHaveLength(3);
        got.forEach((l, i) =>
          expect(Math.abs(l - want[i]!) / want[i]!, `step ${i + 4} on ${world} rank(s)`).toBeLessThan(
            tolerance[optimizer],
          ),
        );
      }
    },
  );

  /** Resolves once something accepts connections on `port` (rank 0's store). */
  const storeListening = async (port: number) => {
    for (;;) {
      const up = await new Promise<boolean>((resolve) => {
        const socket = connect(port, '127.0.0.1', () => (socket.end(), resolve(true))).on('error', () =>
          resolve(false),
        );
      });
      if (up) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  /** `nmoe train` as rank `rank` of 2 with the torchrun variables (no launcher: rank 0 hosts the store). */
  const startRank = (rank: number, port: number, args: string[]) => {
    const env = {
      ...BASE_ENV,
      RANK: String(rank),
      WORLD_SIZE: '2',
      LOCAL_RANK: String(rank),
      LOCAL_WORLD_SIZE: '2',
      MASTER_ADDR: '127.0.0.1',
      MASTER_PORT: String(port),
    };
    const child = spawn(process.execPath, [BIN, 'train', ...args], { env });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    return {
      child,
      done: new Promise<{ code: number | null; out: string }>((resolve) =>
        child.on('close', (code) => resolve({ code, out })),
      ),
    };
  };

  it('a Ctrl-C while the ranks are still meeting stops the run cleanly after its first step', async () => {
    const dir = tempDir('early-stop'),
      port = await freePort();
    const first = startRank(0, port, train(dir, ['--steps=50']));
    await storeListening(port); // rank 0 is at the rendezvous, waiting for rank 1 (its Ctrl-C handler is in place)
    first.child.kill('SIGINT');
    const second = startRank(1, port, train(dir, ['--steps=50']));
    const [r0, r1] = await Promise.all([first.done, second.done]);
    expect([r0.code, r1.code], r0.out + r1.out).toEqual([0, 0]);
    expect(r0.out).toMatch(/^interrupted: stopping after this step/m);
    expect(r0.out).toMatch(/^stopped: 1 steps in /m);
    expect(readdirSync(join(dir, 'ckpt'))).toContain('iter_0000001');
  });

  it("refuses ranks that disagree on the config, or that cannot see rank 0's checkpoint_dir, before any work", async () => {
    const dir = tempDir('disagree');
    const ranks = async (args: (rank: number) => string[]) => {
      const port = await freePort();
      return Promise.all([0, 1].map((rank) => startRank(rank, port, args(rank)).done));
    };
    const seeds = await ranks((r) => train(join(dir, 'a'), r === 1 ? ['--seed=7'] : []));
    expect(seeds[1]!.code).toBe(2);
    expect(seeds[1]!.out).toContain(
      "nmoe: error: rank 1's config differs from rank 0's: seed (42 on rank 0, 7 here). Fix: start every rank with the same config file",
    );
    expect(seeds[0]!.code).not.toBe(0);
    const dirs = await ranks((r) => train(join(dir, 'b'), [`--checkpoint_dir=${join(dir, `ckpt-of-rank-${r}`)}`]));
    expect(dirs[1]!.code).toBe(2);
    expect(dirs[1]!.out).toMatch(
      new RegExp(
        `nmoe: error: rank 1 cannot see rank 0's checkpoint_dir: the file rank 0 wrote \\(\\S+ckpt-of-rank-0/\\.nmoe-shared-[0-9a-f]{8}\\) is not in \\S+ckpt-of-rank-1 here`,
      ),
    );
    expect(dirs[0]!.code).toBe(2);
    expect(dirs[0]!.out).toMatch(/rank 0: another rank cannot see checkpoint_dir/);
    for (const out of [...seeds, ...dirs].map((r) => r.out)) expect(out).not.toMatch(/^step /m);
    expect(readdirSync(join(dir, 'ckpt-of-rank-0'))).toEqual([]); // the marker is gone
  });

  it("stops the run when a rank freezes (SIGSTOP): the other rank's step watchdog kills it, the launcher stops the rest", async () => {
    const dir = tempDir('frozen');
    // The CPU mesh would time out on its own after NMOE_COMM_TIMEOUT_S; NCCL would not, and the watchdog must not rely on it.
    const { child, done } = nmoeAsync(
      ['launch', '--nproc-per-node', '2', '--master-port', '0', '--', ...train(dir, ['--steps=100000'])],
      { ...BASE_ENV, NMOE_STEP_TIMEOUT_S: '2', NMOE_COMM_TIMEOUT_S: '600' },
    );
    let frozen = 0;
    try {
      let printed = '';
      await new Promise<void>((resolve, reject) => {
        const late = setTimeout(() => reject(new Error(`no step 3 within 60 s:\n${printed}`)), 60_000);
        child.stdout.on('data', (d) => /^step +3\//m.test((printed += d)) && (clearTimeout(late), resolve()));
      });
      frozen = rankPid(child.pid!, 1);
      process.kill(frozen, 'SIGSTOP');
      const t0 = Date.now();
      const r = await done;
      expect(Date.now() - t0).toBeLessThan(20_000); // the 2 s timeout, then the launcher's 5 s grace for the frozen rank
      expect(r.code, r.out).toBe(137);
      expect(r.out).toMatch(
        /^nmoe: error: rank 0: step \d+ has not finished 2 s after it began \(NMOE_STEP_TIMEOUT_S\): a collective is waiting/m,
      );
      expect(r.out).toMatch(
        /^nmoe launch: rank 0 \(pid \d+, node 0\) was killed by SIGKILL; stopping the other 1 rank/m,
      );
      await expect.poll(() => isRunning(frozen), { timeout: 5000 }).toBe(false); // SIGKILL reaches a stopped process too
    } finally {
      if (frozen && isRunning(frozen)) process.kill(frozen, 'SIGKILL');
      child.kill('SIGKILL');
    }
  });

  it('runs `nmoe bench train` on 2 ranks, each with its slice of the batch, rank 0 reporting for both', () => {
    const r = nmoe(
      [
        'launch',
        '--nproc-per-node',
        '2',
        '--master-port',
        '0',
        '--entry',
        BIN,
        '--',
        'bench',
        'train',
        'configs/tiny.toml',
        '--device=cpu',
        '--steps',
        '2',
        '--warmup',
        '1',
        '--batch_size=4',
        '--seq_len=32',
      ],
      BASE_ENV,
    );
    expect(r.code, r.out + r.err).toBe(0);
    const lines = r.out.split('\n').filter((l) => l.includes('tokens/s |'));
    expect(lines).toHaveLength(1); // rank 1 stays quiet
    expect(lines[0]).toMatch(/ x 2 \(\S+ tokens\/s per rank\): \S+ tokens\/s \| .* 2 steps of 128 tokens, loss \d/);
  });
});
