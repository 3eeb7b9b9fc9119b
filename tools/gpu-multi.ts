/**
 * The multi-GPU checks of issue #6 on the GPUs of one node (docs/testing.md, "GPU tests"); CI has no GPU, so this is a
 * documented device run, not a vitest file. Each check prints PASS or FAIL with its numbers; exit code 1 if any fails.
 *
 *   node --import tsx tools/gpu-multi.ts [--gpus N] [--out DIR]
 *
 * 1. The tiny default for 50 steps on 1 GPU and on N: the losses agree within bf16 noise; a second N-GPU run gives
 *    bit-identical losses (placement never depends on arrival order).
 * 2. First-step expert gradients on N GPUs against the matching slices of the 1-GPU run's.
 * 3. Exact resume on N GPUs: 3 steps, stop, resume to 6 gives the losses and checkpoint files of 6 straight.
 * 4. A rank that never joins an expert exchange: the others fail after NMOE_COMM_TIMEOUT_S, naming it.
 * 5. RDEP's worst-case buffers that cannot fit: a clear error with the sizes, before anything else is allocated.
 *
 * The verdicts are in gpu-multi-checks.ts (tested on the CPU): each fails on missing data.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runRanks, trainLosses } from '../test/helpers/ranks.ts';
import { makeDirs } from '../src/util/dirs.ts';
import {
  type GradReport,
  type Verdict,
  bitIdentical,
  gpuCount,
  gradsAgree,
  lossesAgree,
  resumeExact,
} from './gpu-multi-checks.ts';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const BIN = join(ROOT, 'bin/nmoe.js');
const arg = (flag: string) => (process.argv.includes(flag) ? process.argv[process.argv.indexOf(flag) + 1] : undefined);
const counted = gpuCount(arg('--gpus'), () => spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8' }));
if (typeof counted === 'string') {
  console.error(`gpu-multi: ${counted}`);
  process.exit(2);
}
const gpus = counted;
const out = resolve(arg('--out') ?? '/tmp/nmoe-gpu-multi');
rmSync(out, { recursive: true, force: true });
let failed = 0;

function report(what: string, { ok, detail }: Verdict): void {
  if (!ok) failed++;
  console.log(`${ok ? 'PASS' : 'FAIL'}  ${what}: ${detail}`);
}

/** Runs `node args`: its exit code and output. */
function run(args: string[]): { code: number | null; text: string } {
  const r = spawnSync(process.execPath, args, { cwd: ROOT, encoding: 'utf8', timeout: 300_000 });
  return { code: r.status, text: `${r.stdout}${r.stderr}` };
}

/** `nmoe train` on one GPU or `nmoe launch` on `world`, with every output under out/tag. */
function train(tag: string, world: number, extra: string[]) {
  const dir = join(out, tag);
  const common = [
    'configs/tiny.toml',
    '--device=cuda',
    '--log_every=1',
    `--metrics_dir=${dir}/metrics`,
    `--experiments_db=${dir}/runs.db`,
    `--checkpoint_dir=${dir}/ckpt`,
    ...extra,
  ];
  return world === 1
    ? run([BIN, 'train', ...common])
    : run([BIN, 'launch', '--nproc-per-node', String(world), '--master-port', '0', '--', ...common]);
}

async function losses(tag: string): Promise<number[]> {
  const dir = join(out, tag, 'metrics');
  return existsSync(dir) ? trainLosses(dir) : [];
}

/** The fixture's mode on `world` ranks of this node's GPUs: what each rank wrote (null where it wrote nothing). */
async function ranks(
  world: number,
  mode: string,
  tag: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<unknown[]> {
  const dir = join(out, tag);
  makeDirs(dir);
  const done = await runRanks(world, (r) => [mode, join(dir, `${r}.json`), ...args], { DEVICE: 'cuda', ...env });
  done.forEach((d, r) => writeFileSync(join(dir, `${r}.log`), d.out));
  return done.map((_, r) => {
    try {
      return JSON.parse(readFileSync(join(dir, `${r}.json`), 'utf8'));
    } catch {
      return null;
    }
  });
}

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

console.log(`nmoe multi-GPU checks on ${gpus} GPUs, output in ${out}`);

// 1. Losses on 1 and N GPUs, and an N-GPU rerun.
const steps = ['--steps=50', '--checkpoint_every=0'];
for (const [tag, world] of [
  ['one', 1],
  ['many', gpus],
  ['many-again', gpus],
] as const) {
  const r = train(tag, world, steps);
  if (r.code !== 0) console.log(r.text.split('\n').slice(-15).join('\n'));
}
const [one, many, again] = await Promise.all(['one', 'many', 'many-again'].map(losses));
report(`50 steps on 1 vs ${gpus} GPUs`, lossesAgree(one!, many!, 50, 5e-2));
report(`${gpus}-GPU rerun`, bitIdentical(many!, again!, 50));

// 2. First-step expert gradients: each rank's against its slice of the single GPU's.
const cfg = ['configs/tiny.toml', '--batch_size=8', '--seq_len=128'];
const [single] = (await ranks(1, 'grads', 'grads-1', cfg)) as (GradReport | null)[];
const parts = (await ranks(gpus, 'grads', `grads-${gpus}`, cfg)) as (GradReport | null)[];
report('first-step expert gradients', gradsAgree(single ?? null, parts, gpus));

// 3. Exact resume on N GPUs.
train('straight', gpus, ['--steps=6', '--checkpoint_every=3']);
train('resumed', gpus, ['--steps=3', '--checkpoint_every=3']);
const resumed = train('resumed', gpus, ['--steps=6', '--checkpoint_every=3', '--resume']);
const [s6, r6] = await Promise.all([losses('straight'), losses('resumed')]);
const final = (tag: string, f = '') => join(out, tag, 'ckpt/iter_0000006', f);
const files = existsSync(final('straight'))
  ? readdirSync(final('straight')).filter((f) => f.endsWith('.safetensors'))
  : [];
const same = files.filter(
  (f) => existsSync(final('resumed', f)) && sha(final('straight', f)) === sha(final('resumed', f)),
);
report(
  `exact resume on ${gpus} GPUs`,
  resumeExact({
    said: /resumed run \S+ from step 3/.test(resumed.text),
    straight: s6,
    resumed: r6,
    steps: 6,
    files,
    identical: same,
    gpus,
  }),
);

// 4. A stalled rank.
const [stalled] = (await ranks(gpus, 'stall-in-exchange', 'stall', [], {
  NMOE_COMM_TIMEOUT_S: '3',
  EXPERTS: String(2 * gpus),
})) as ({ error: string | null; seconds: number } | null)[];
report('RDEP barrier timeout', {
  ok: !!stalled?.error && /waited 3 s for rank 1/.test(stalled.error) && stalled.seconds < 30,
  detail: stalled ? `after ${stalled.seconds.toFixed(1)} s: ${stalled.error}` : 'rank 0 wrote nothing',
});

// 5. Worst-case buffers that cannot fit.
const oom = train('oom', gpus, ['--steps=1', `--batch_size=${1 << 20}`, '--seq_len=128']);
const line = oom.text.split('\n').find((l) => /RDEP needs/.test(l)) ?? '';
report('RDEP buffers too large', {
  ok: oom.code !== 0 && /RDEP needs [\d.]+ GiB per GPU .* only [\d.]+ GiB is free/.test(line),
  detail: line.trim() || oom.text.slice(-300),
});

console.log(`${failed === 0 ? 'all checks passed' : `${failed} check(s) failed`}`);
process.exitCode = failed ? 1 : 0;
