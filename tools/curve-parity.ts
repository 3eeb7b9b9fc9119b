/**
 * Loss-curve parity with PyTorch: nmoe trains a config for N steps, and tools/torch_train.py (an independent
 * PyTorch model) trains the same config from nmoe's own step-0 weights on the same token windows in the same order;
 * then both curves are printed with the per-step difference and the mean gap over a window. `--torch-runs 2` trains
 * the PyTorch side twice: on a GPU its nondeterministic kernels make the two runs differ, which is the noise floor a
 * gap has to be judged against.
 *
 *   node --import tsx tools/curve-parity.ts [--config configs/tiny.toml] [--steps 50] [--window FROM:TO]
 *        [--tolerance 0.03] [--max-step-diff X] [--torch-runs 1|2] [--torch-device auto|cpu|cuda] [--sdpa]
 *        [--python python3] [--out runs/curves] [--torch-no-bias-update] [--key=value ...]
 *
 * The config is the file, then the --key=value overrides (NMOE_* environment overrides are ignored, so a run is
 * reproducible from its command line); `device` picks nmoe's backend. Data: `data_path` shards (direct mode); with
 * none, the embedded corpus is written as a shard into --out so both sides read one file. Precision follows nmoe:
 * the CPU trains in fp32 and so does PyTorch (TF32 off); CUDA trains bf16 weights with master_weights = "fp32" and
 * optim_state_dtype = "fp32" (PyTorch: fp32 weights and moments, a bf16 cast per forward) or with both "bf16" (bf16
 * weights and moments on both sides).
 *
 * Steps are 1-based; the window (default: the second half) is inclusive. The verdict: the mean of nmoe - torch over
 * the window is within --tolerance, or within the spread of PyTorch's own two runs when there are two; with
 * --max-step-diff, every step's |nmoe - torch| must also be within it. Exit code 0 when it holds, 1 when not, 2 on a
 * usage error. Everything lands in --out: config.json, step0.safetensors, torch_<k>.json and curves.json.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { saveParams } from '../src/checkpoint/params-io.ts';
import { loadConfig } from '../src/config/load.ts';
import type { Config } from '../src/config/schema.ts';
import { embeddedTokens } from '../src/data/embedded-corpus.ts';
import { createLoader } from '../src/data/loader/build.ts';
import { npyHeader } from '../src/data/npy.ts';
import { configSections } from '../src/config/sections.ts';
import { selectBackend } from '../src/tensor/select.ts';
import { createTrainee, trainStep } from '../src/train/step.ts';
import { makeDirs } from '../src/util/dirs.ts';
import { UserError } from '../src/util/errors.ts';
import { writeConfigJson } from './parity.ts';
import { runIfScript } from './script-main.ts';

export interface CurveOptions {
  configPath: string;
  overrides: string[];
  steps: number;
  window: [number, number] | null;
  tolerance: number;
  maxStepDiff: number | null;
  torchRuns: number;
  torchDevice: string;
  sdpa: boolean;
  python: string;
  outDir: string;
  torchBiasUpdate: boolean;
}

export interface CurveReport {
  device: string;
  torchDevice: string;
  nmoe: number[];
  torch: number[][];
  window: [number, number];
  /** Mean of nmoe - torch (the first run) over the window. */
  meanGap: number;
  /** Largest |nmoe - torch| over all steps, and its step (1-based). */
  maxStepDiff: { value: number; step: number };
  /** |mean of torch run 1 - torch run 2| over the window; null with one run. */
  torchSpread: number | null;
  ok: boolean;
  verdict: string;
}

/** The embedded corpus as one shard, so the PyTorch side reads exactly the tokens nmoe's loader would. */
function writeEmbeddedShard(dir: string): string {
  const tokens = Uint32Array.from(embeddedTokens());
  makeDirs(dir);
  writeFileSync(join(dir, 'embedded.npy'), Buffer.concat([npyHeader(tokens.length), Buffer.from(tokens.buffer)]));
  return dir;
}

/** PyTorch's precision flags for nmoe's on this backend, or why there are none. */
function torchPrecision(device: 'cpu' | 'cuda', config: Config): string[] {
  if (device === 'cpu') return ['--dtype', 'fp32'];
  const { master_weights: m, optim_state_dtype: s } = config;
  if (m === 'fp32' && s === 'fp32') return ['--dtype', 'bf16', '--master', 'fp32'];
  if (m === 'bf16' && s === 'bf16') return ['--dtype', 'bf16', '--master', 'bf16'];
  throw new UserError(
    `master_weights = "${m}" with optim_state_dtype = "${s}" has no PyTorch twin. ` +
      'Fix: set both to "fp32" (nmoe\'s default) or both to "bf16" (the reference\'s precision).',
  );
}

/** nmoe's losses, step by step, from the same start `nmoe train` makes; writes the step-0 weights first. */
async function trainNmoe(
  config: Config,
  weightsPath: string,
): Promise<{ losses: number[]; device: 'cpu' | 'cuda'; name: string }> {
  const sections = configSections(config);
  const { backend: b } = await selectBackend(config.device);
  const trainee = createTrainee(b, sections);
  await saveParams(weightsPath, trainee.model.params, { metadata: { source: 'tools/curve-parity.ts', step: '0' } });
  const loader = createLoader(sections.loader, 0, 1);
  const losses: number[] = [];
  const tokensPerStep = config.batch_size * config.seq_len;
  try {
    for (let step = 0; step < config.steps; step++) {
      const batch = loader.next();
      const ids = b.upload(batch.inputs, [batch.inputs.length], 'i32');
      const targets = b.upload(batch.targets, [batch.targets.length], 'i32');
      const out = trainStep(trainee, ids, targets, batch.localBatch, step * tokensPerStep);
      losses.push((await b.read(out.loss))[0]!);
      for (const t of [ids, targets]) t.free();
      out.free();
      if ((step + 1) % Math.max(1, Math.floor(config.steps / 10)) === 0 || step + 1 === config.steps) {
        console.log(`nmoe: step ${step + 1}/${config.steps} loss ${losses[step]!.toFixed(5)}`);
      }
    }
  } finally {
    loader.close();
    trainee.opt.free();
    trainee.model.free();
  }
  return { losses, device: b.device === 'cuda' ? 'cuda' : 'cpu', name: b.name };
}

function trainTorch(
  o: CurveOptions,
  files: { config: string; weights: string },
  precision: string[],
  run: number,
): { losses: number[]; device: string } {
  const out = join(o.outDir, `torch_${run}.json`);
  const args = [
    fileURLToPath(new URL('./torch_train.py', import.meta.url)),
    '--config',
    files.config,
    '--weights',
    files.weights,
    '--steps',
    String(o.steps),
    '--out',
    out,
    '--device',
    o.torchDevice,
    ...precision,
    ...(o.sdpa ? ['--sdpa'] : []),
    ...(o.torchBiasUpdate ? [] : ['--no-bias-update']),
  ];
  console.log(`$ ${o.python} ${args.join(' ')}`);
  const r = spawnSync(o.python, args, { stdio: 'inherit' });
  if (r.error || r.status !== 0)
    throw new UserError(`torch_train.py failed (${r.error?.message ?? `exit code ${r.status}`})`);
  const doc = JSON.parse(readFileSync(out, 'utf8')) as { losses: number[]; device: string };
  return { losses: doc.losses, device: doc.device };
}

const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / Math.max(1, xs.length);

/** Compares the curves; steps in `window` are 1-based and inclusive. */
export function compareCurves(
  nmoe: number[],
  torch: number[][],
  window: [number, number],
  tolerance: number,
  maxStepDiff: number | null,
): Omit<CurveReport, 'device' | 'torchDevice' | 'nmoe' | 'torch'> {
  const [from, to] = window;
  const inWindow = (xs: number[]) => xs.slice(from - 1, to);
  const ref = torch[0]!;
  const meanGap = mean(inWindow(nmoe)) - mean(inWindow(ref));
  let worst = { value: 0, step: 0 };
  nmoe.forEach((x, i) => {
    const d = Math.abs(x - ref[i]!);
    if (!(d <= worst.value)) worst = { value: d, step: i + 1 }; // a NaN is always the worst
  });
  const torchSpread = torch.length > 1 ? Math.abs(mean(inWindow(torch[0]!)) - mean(inWindow(torch[1]!))) : null;
  const allowed = Math.max(tolerance, torchSpread ?? 0);
  const gapOk = Math.abs(meanGap) <= allowed;
  const stepOk = maxStepDiff === null || worst.value <= maxStepDiff;
  const parts = [
    `mean gap nmoe - torch over steps ${from}-${to}: ${meanGap.toExponential(2)} (allowed ${allowed.toExponential(2)}` +
      (torchSpread !== null
        ? `: the larger of --tolerance and torch's own spread ${torchSpread.toExponential(2)})`
        : ')'),
  ];
  parts.push(
    `largest step difference ${worst.value.toExponential(2)} at step ${worst.step}` +
      (maxStepDiff !== null ? ` (allowed ${maxStepDiff.toExponential(2)})` : ''),
  );
  return {
    window,
    meanGap,
    maxStepDiff: worst,
    torchSpread,
    ok: gapOk && stepOk,
    verdict: `${gapOk && stepOk ? 'PASS' : 'FAIL'}: ${parts.join('; ')}`,
  };
}

export async function curveParity(o: CurveOptions): Promise<CurveReport> {
  const { config } = loadConfig(o.configPath, { overrides: [...o.overrides, `--steps=${o.steps}`], env: {} });
  if (config.flow_mode !== null)
    throw new UserError(
      'curve parity reads data in direct mode. Fix: set data_path to the shards instead of flow_mode.',
    );
  makeDirs(o.outDir);
  const dataPath = config.data_path ?? writeEmbeddedShard(join(o.outDir, 'data'));
  const run: Config = { ...config, data_path: resolve(dataPath) };
  const files = { config: join(o.outDir, 'config.json'), weights: join(o.outDir, 'step0.safetensors') };
  writeConfigJson(files.config, o.configPath, run);
  const window = o.window ?? [Math.floor(o.steps / 2) + 1, o.steps];
  if (window[0] < 1 || window[1] > o.steps || window[0] > window[1])
    throw new UserError(`--window ${window.join(':')} is outside steps 1-${o.steps}`);

  const nmoe = await trainNmoe(run, files.weights);
  const precision = torchPrecision(nmoe.device, run);
  const torchRuns = Array.from({ length: o.torchRuns }, (_, k) => trainTorch(o, files, precision, k + 1));
  const report: CurveReport = {
    device: nmoe.name,
    torchDevice: torchRuns[0]!.device,
    nmoe: nmoe.losses,
    torch: torchRuns.map((r) => r.losses),
    ...compareCurves(
      nmoe.losses,
      torchRuns.map((r) => r.losses),
      window,
      o.tolerance,
      o.maxStepDiff,
    ),
  };
  writeFileSync(join(o.outDir, 'curves.json'), `${JSON.stringify(report, null, 2)}\n`);
  return report;
}

/** One row per `every` steps (and the last): both curves and their difference. */
export function formatCurves(r: CurveReport, every: number): string[] {
  const head = ['step', 'nmoe', ...r.torch.map((_, k) => `torch ${k + 1}`), 'nmoe - torch'];
  const lines = [head.map((h) => h.padStart(14)).join('')];
  r.nmoe.forEach((x, i) => {
    if ((i + 1) % every !== 0 && i + 1 !== r.nmoe.length && i !== 0) return;
    const cells = [
      String(i + 1),
      x.toFixed(5),
      ...r.torch.map((t) => t[i]!.toFixed(5)),
      (x - r.torch[0]![i]!).toExponential(2),
    ];
    lines.push(cells.map((c) => c.padStart(14)).join(''));
  });
  lines.push(`nmoe on ${r.device}, torch on ${r.torchDevice}`, r.verdict);
  return lines;
}

// ------------------------------------------------------------------------------------------------------------
// command line

class UsageError extends Error {}

const USAGE = `usage: node --import tsx tools/curve-parity.ts [--config configs/tiny.toml] [--steps 50] [--window FROM:TO]
         [--tolerance 0.03] [--max-step-diff X] [--torch-runs 1|2] [--torch-device auto|cpu|cuda] [--sdpa]
         [--python python3] [--out runs/curves] [--torch-no-bias-update] [--key=value ...]`;

function parseArgs(argv: string[]): CurveOptions {
  const o: CurveOptions = {
    configPath: 'configs/tiny.toml',
    overrides: [],
    steps: 50,
    window: null,
    tolerance: 0.03,
    maxStepDiff: null,
    torchRuns: 1,
    torchDevice: 'auto',
    sdpa: false,
    python: process.env.PYTHON ?? 'python3',
    outDir: 'runs/curves',
    torchBiasUpdate: true,
  };
  const number = (flag: string, v: string, min: number) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new UsageError(`${flag} must be a number >= ${min}, got ${v}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const take = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new UsageError(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--config':
        o.configPath = take();
        break;
      case '--steps':
        o.steps = number(flag, take(), 1);
        break;
      case '--window': {
        const m = /^(\d+):(\d+)$/.exec(take());
        if (!m) throw new UsageError('--window is FROM:TO, 1-based steps, inclusive (e.g. 110:200)');
        o.window = [Number(m[1]), Number(m[2])];
        break;
      }
      case '--tolerance':
        o.tolerance = number(flag, take(), 0);
        break;
      case '--max-step-diff':
        o.maxStepDiff = number(flag, take(), 0);
        break;
      case '--torch-runs':
        o.torchRuns = number(flag, take(), 1);
        break;
      case '--torch-device':
        o.torchDevice = take();
        break;
      case '--sdpa':
        o.sdpa = true;
        break;
      case '--python':
        o.python = take();
        break;
      case '--out':
        o.outDir = take();
        break;
      case '--torch-no-bias-update':
        o.torchBiasUpdate = false;
        break;
      case '--help':
      case '-h':
        throw new UsageError('');
      default:
        if (flag.startsWith('--') && inline !== undefined) o.overrides.push(a);
        else throw new UsageError(`unknown argument ${a} (config overrides are written --key=value)`);
    }
  }
  if (o.torchRuns > 2) throw new UsageError('--torch-runs is 1 or 2');
  return o;
}

export async function main(argv: string[]): Promise<number> {
  let o: CurveOptions;
  try {
    o = parseArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    if (err.message) process.stderr.write(`curve-parity: ${err.message}\n`);
    process.stderr.write(`${USAGE}\n`);
    return err.message ? 2 : 0;
  }
  const report = await curveParity(o);
  for (const line of formatCurves(report, Math.max(1, Math.floor(o.steps / 20)))) console.log(line);
  return report.ok ? 0 : 1;
}

await runIfScript(import.meta.url, 'curve-parity', main);
