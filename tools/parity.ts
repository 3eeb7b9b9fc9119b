/**
 * Parity of nmoe's model with an independent PyTorch implementation (tools/torch_ref.py): same weights, same batch,
 * one forward/backward each, then the loss and every parameter gradient compared norm-wise, ||a - b|| / ||b||.
 *
 *   node --import tsx tools/parity.ts [--config configs/tiny.toml] [--device cpu|cuda] [--dtype fp32|bf16]
 *        [--out runs/parity] [--torch] [--torch-device auto|cpu|cuda] [--python python3] [--own-routing]
 *        [--bias-std 0.01] [--reuse DIR] [--key=value ...]
 *   node --import tsx tools/parity.ts --compare got.safetensors ref.safetensors [--dtype fp32|bf16]
 *
 * Into --out it writes config.json (as `nmoe config show --json`), weights.safetensors (the initialised parameters
 * under nmoe's names, router biases drawn from N(0, bias-std) so the bias takes part in the top-k), batch.safetensors
 * (I32 inputs and targets [batch * seq_len], metadata batch) and nmoe_grads.safetensors (loss, grad.<name>, and
 * route.blocks.N.ffn.idx, nmoe's expert choices, and route.blocks.N.attn.sel, NSA's block choices). The nmoe side computes from the files, exactly as the PyTorch side
 * does. With --torch it runs torch_ref.py (which by default takes nmoe's expert choices, see its header), writes
 * torch_grads.safetensors and compares; exit code 1 when anything is over tolerance, 2 on a usage error.
 * --reuse DIR takes config.json, weights.safetensors and batch.safetensors from an earlier run's folder (e.g. to
 * compare nmoe on CUDA with nmoe on the CPU from the very same weights) and writes this run's results to --out.
 *
 * Config: the file, then the small defaults below (seq_len 64, batch 4), then --key=value overrides. NMOE_*
 * environment overrides are ignored so a run is reproducible from its command line.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadParams, saveParams } from '../src/checkpoint/params-io.ts';
import {
  type ReadTensor,
  type SafetensorsContents,
  type TensorToWrite,
  readSafetensors,
  writeSafetensors,
} from '../src/checkpoint/safetensors.ts';
import { configFingerprint } from '../src/config/fingerprint.ts';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { type Config, defaultConfig } from '../src/config/schema.ts';
import { type ModelConfig, modelConfig } from '../src/config/sections.ts';
import { Transformer } from '../src/model/transformer.ts';
import type { Backend } from '../src/tensor/backend.ts';
import { selectBackend } from '../src/tensor/select.ts';
import { hashString, philox4x32 } from '../src/util/philox.ts';
import { makeDirs } from '../src/util/dirs.ts';
import { runIfScript } from './script-main.ts';

export type Precision = 'fp32' | 'bf16';

export interface Tolerances {
  /** |loss_a - loss_b| / |loss_b|. */
  loss: number;
  /** ||g_a - g_b|| / ||g_b|| per tensor. */
  grad: number;
  /** Largest fraction of token-layers whose expert choice may differ between the two sides. */
  routing: number;
}

/**
 * fp32: both sides compute in fp32 (different summation orders) and land near 1e-6. bf16: every stored activation is
 * rounded to 8 mantissa bits on both sides, in different places, which moves gradients by about 1e-2. A near-tie in
 * the router can go either way under such noise, hence the routing allowance (fp32 ties at 1e-7 are rare).
 */
export const TOLERANCES: Record<Precision, Tolerances> = {
  fp32: { loss: 1e-4, grad: 1e-3, routing: 0.01 },
  bf16: { loss: 2e-2, grad: 5e-2, routing: 0.25 },
};

/** Small defaults applied over the config file (before the command line's overrides). */
export const DEFAULT_OVERRIDES = ['--seq_len=64', '--batch_size=4'];

export interface GradRow {
  name: string;
  shape: number[];
  err: number;
  normGot: number;
  normRef: number;
  ok: boolean;
}

export interface Comparison {
  tolerances: Tolerances;
  loss: { got: number; ref: number; err: number; ok: boolean };
  rows: GradRow[];
  /** Gradients one side has and the other lacks, or with different shapes. */
  problems: string[];
  /** The reference's own top-k disagreement, when it reports one (torch_ref's `routing_mismatch` metadata). */
  routing: { mismatch: number; ok: boolean } | null;
  ok: boolean;
}

/** ||a - b|| / ||b|| in double; ||a - b|| when b is all zeros. */
export function relativeError(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
): { err: number; normA: number; normB: number } {
  let diff = 0,
    na = 0,
    nb = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!,
      y = b[i]!;
    diff += (x - y) ** 2;
    na += x * x;
    nb += y * y;
  }
  const err = nb === 0 ? Math.sqrt(diff) : Math.sqrt(diff / nb);
  return { err: Number.isNaN(err) ? Infinity : err, normA: Math.sqrt(na), normB: Math.sqrt(nb) };
}

/**
 * Compares `got` (nmoe) against `ref` (the reference): `loss` and every `grad.*` tensor. Other tensors (route.*)
 * are ignored. A gradient present on one side only, or of another shape, fails the comparison.
 */
export function compareResults(got: SafetensorsContents, ref: SafetensorsContents, tolerances: Tolerances): Comparison {
  const scalar = (c: SafetensorsContents, which: string): number => {
    const t = c.tensors.get('loss');
    if (!t || t.data.length !== 1) throw new Error(`the ${which} results have no scalar "loss"`);
    return t.data[0]!;
  };
  const lossGot = scalar(got, 'nmoe'),
    lossRef = scalar(ref, 'reference');
  const lossErr = Math.abs(lossGot - lossRef) / Math.max(Math.abs(lossRef), 1e-30);
  const loss = {
    got: lossGot,
    ref: lossRef,
    err: Number.isNaN(lossErr) ? Infinity : lossErr,
    ok: lossErr <= tolerances.loss,
  };

  const grads = (c: SafetensorsContents) => new Map([...c.tensors].filter(([n]) => n.startsWith('grad.')));
  const a = grads(got),
    b = grads(ref);
  const problems: string[] = [];
  const rows: GradRow[] = [];
  for (const [name, tb] of b) {
    const ta = a.get(name);
    const param = name.slice('grad.'.length);
    if (!ta) {
      problems.push(`${param}: the reference has a gradient, nmoe has none`);
      continue;
    }
    if (!sameShape(ta, tb)) {
      problems.push(`${param}: nmoe's gradient is [${ta.shape.join(', ')}], the reference's [${tb.shape.join(', ')}]`);
      continue;
    }
    const { err, normA, normB } = relativeError(ta.data, tb.data);
    rows.push({ name: param, shape: tb.shape, err, normGot: normA, normRef: normB, ok: err <= tolerances.grad });
  }
  for (const name of a.keys()) {
    if (!b.has(name)) problems.push(`${name.slice('grad.'.length)}: nmoe has a gradient, the reference has none`);
  }
  if (rows.length === 0 && problems.length === 0) problems.push('no gradients to compare');

  const reported = ref.metadata.routing_mismatch;
  const routing =
    reported === undefined ? null : { mismatch: Number(reported), ok: Number(reported) <= tolerances.routing };
  const ok = loss.ok && problems.length === 0 && rows.every((r) => r.ok) && (routing?.ok ?? true);
  return { tolerances, loss, rows, problems, routing, ok };
}

function sameShape(a: ReadTensor, b: ReadTensor): boolean {
  return a.shape.length === b.shape.length && a.shape.every((d, i) => d === b.shape[i]);
}

export function compareFiles(gotPath: string, refPath: string, tolerances: Tolerances): Comparison {
  return compareResults(readSafetensors(gotPath), readSafetensors(refPath), tolerances);
}

const sci = (x: number) => (Number.isFinite(x) ? x.toExponential(2) : String(x));

/** One line per gradient, then the problems, then the verdict with the tolerances used. */
export function formatComparison(c: Comparison, labels = { got: 'nmoe', ref: 'reference' }): string[] {
  const lines: string[] = [];
  const width = Math.max(...c.rows.map((r) => r.name.length), 4);
  lines.push(`${'tensor'.padEnd(width)}  ${'shape'.padEnd(16)}  rel err    ||${labels.ref}||`);
  for (const r of c.rows) {
    lines.push(
      `${r.name.padEnd(width)}  ${`[${r.shape.join(',')}]`.padEnd(16)}  ${sci(r.err).padEnd(9)}  ${sci(r.normRef).padEnd(9)}  ${r.ok ? 'ok' : 'FAIL'}`,
    );
  }
  lines.push(
    `loss: ${labels.got} ${c.loss.got.toFixed(7)}, ${labels.ref} ${c.loss.ref.toFixed(7)}, rel err ${sci(c.loss.err)} ${c.loss.ok ? 'ok' : 'FAIL'}`,
  );
  for (const p of c.problems) lines.push(`FAIL ${p}`);
  const worst = c.rows.reduce<GradRow | null>((w, r) => (!w || r.err > w.err ? r : w), null);
  const failed = c.rows.filter((r) => !r.ok).length;
  const t = c.tolerances;
  const parts = [
    `loss ${sci(c.loss.err)} (tol ${sci(t.loss)})`,
    `${c.rows.length - failed}/${c.rows.length} gradients within ${sci(t.grad)}` +
      (worst ? ` (worst ${sci(worst.err)}: ${worst.name})` : ''),
  ];
  if (c.routing)
    parts.push(`routing mismatch ${(100 * c.routing.mismatch).toFixed(2)}% (tol ${(100 * t.routing).toFixed(0)}%)`);
  lines.push(`${c.ok ? 'PASS' : 'FAIL'}: ${parts.join(', ')}`);
  return lines;
}

// ------------------------------------------------------------------------------------------------------------
// the nmoe side

export interface ParityFiles {
  config: string;
  weights: string;
  batch: string;
  grads: string;
}

export function parityFiles(outDir: string): ParityFiles {
  return {
    config: join(outDir, 'config.json'),
    weights: join(outDir, 'weights.safetensors'),
    batch: join(outDir, 'batch.safetensors'),
    grads: join(outDir, 'nmoe_grads.safetensors'),
  };
}

export interface PrepareOptions {
  configPath?: string;
  /** --key=value overrides, applied after DEFAULT_OVERRIDES. */
  overrides?: string[];
  device: 'cpu' | 'cuda';
  precision: Precision;
  outDir: string;
  /** Std of the random router biases and of the tensors initialised to zero (SWA's biases and sinks), default
   *  0.01; 0 leaves them at zero. */
  biasStd?: number;
}

async function backendFor(device: 'cpu' | 'cuda'): Promise<Backend> {
  return (await selectBackend(device)).backend;
}

/** The model and the batch size a parity check runs. */
export type ParityConfig = ModelConfig & { readonly batch_size: number };

const parityConfig = (config: Config): ParityConfig => ({ ...modelConfig(config), batch_size: config.batch_size });

/** A batch of sequences of uniform random ids (1 in 16 is EOS, so the loss mask matters); targets = next ids. */
export function randomBatch(cfg: ParityConfig, seed: number): { inputs: Int32Array; targets: Int32Array } {
  const B = cfg.batch_size,
    S = cfg.seq_len;
  const inputs = new Int32Array(B * S),
    targets = new Int32Array(B * S);
  const stream = hashString('parity.batch');
  for (let b = 0; b < B; b++) {
    const seq = new Int32Array(S + 1);
    for (let t = 0; t <= S; t++) {
      const r = philox4x32(b * (S + 1) + t, 0, 0, 0, seed >>> 0, stream);
      seq[t] = r[1]! % 16 === 0 ? cfg.eos_token_id : r[0]! % cfg.vocab_size;
    }
    inputs.set(seq.subarray(0, S), b * S);
    targets.set(seq.subarray(1), b * S);
  }
  return { inputs, targets };
}

/** The config as `nmoe config show --json` prints it, which the PyTorch tools read. */
export function writeConfigJson(path: string, source: string, config: Config): void {
  writeFileSync(path, `${JSON.stringify({ path: source, fingerprint: configFingerprint(config), config }, null, 2)}\n`);
}

/** Builds and initialises the model, and writes config.json, weights.safetensors and batch.safetensors. */
export async function prepareParity(opts: PrepareOptions): Promise<{ files: ParityFiles; cfg: ParityConfig }> {
  const { config } = loadConfig(opts.configPath ?? defaultConfigPath(), {
    overrides: [...DEFAULT_OVERRIDES, ...(opts.overrides ?? [])],
    env: {},
  });
  const cfg = parityConfig(config);
  makeDirs(opts.outDir);
  const files = parityFiles(opts.outDir);
  writeConfigJson(files.config, opts.configPath ?? defaultConfigPath(), config);

  const b = await backendFor(opts.device);
  const model = new Transformer(b, cfg, { dtype: opts.precision === 'bf16' ? 'bf16' : 'f32' });
  try {
    model.params.initialize(cfg.seed);
    const biasStd = opts.biasStd ?? 0.01;
    if (biasStd > 0) {
      for (const p of model.params.params) {
        // Zeros would hide what these tensors do in the forward.
        if (p.buffer || p.init.kind === 'zeros')
          b.fillNormal(p.value, { std: biasStd, seed: cfg.seed, stream: hashString(`parity.${p.name}`) });
      }
    }
    await saveParams(files.weights, model.params, { metadata: { source: 'tools/parity.ts' } });
  } finally {
    model.free();
  }
  const { inputs, targets } = randomBatch(cfg, cfg.seed);
  writeSafetensors(
    files.batch,
    [
      { name: 'inputs', dtype: 'I32', shape: [inputs.length], data: inputs },
      { name: 'targets', dtype: 'I32', shape: [targets.length], data: targets },
    ],
    { batch: String(cfg.batch_size), seq_len: String(cfg.seq_len) },
  );
  return { files, cfg };
}

/** The config a parity folder was prepared with (config.json holds a validated config). */
export function readParityConfig(path: string): ParityConfig {
  const doc = JSON.parse(readFileSync(path, 'utf8')) as { config?: Partial<Config> };
  if (!doc.config) throw new Error(`${path} has no "config" object (expected the output of nmoe config show --json)`);
  return parityConfig({ ...defaultConfig(), ...doc.config } as Config);
}

/**
 * nmoe's loss and gradients for the prepared files: a fresh model loads weights.safetensors, runs batch.safetensors
 * forward and backward, and writes loss, grad.<name> (F32), route.<moe layer>.idx and, for NSA layers,
 * route.blocks.N.attn.sel (the blocks each token selected) to `out`.
 */
export async function nmoeGrads(
  files: ParityFiles,
  opts: { device: 'cpu' | 'cuda'; precision: Precision; out?: string },
): Promise<{ loss: number; out: string }> {
  const cfg = readParityConfig(files.config);
  const { tensors, metadata } = readSafetensors(files.batch);
  const batch = Number(metadata.batch);
  const inputs = tensors.get('inputs')?.data,
    targets = tensors.get('targets')?.data;
  if (
    !(inputs instanceof Int32Array) ||
    !(targets instanceof Int32Array) ||
    !(batch > 0) ||
    inputs.length !== batch * cfg.seq_len ||
    targets.length !== inputs.length
  ) {
    throw new Error(
      `${files.batch}: needs I32 inputs and targets of batch * seq_len (${batch} x ${cfg.seq_len}) and metadata batch`,
    );
  }
  const b = await backendFor(opts.device);
  const model = new Transformer(b, cfg, { dtype: opts.precision === 'bf16' ? 'bf16' : 'f32' });
  const out = opts.out ?? files.grads;
  try {
    await loadParams(files.weights, model.params);
    model.params.zeroGrads();
    const ids = b.upload(inputs, [inputs.length], 'i32');
    const tgt = b.upload(targets, [targets.length], 'i32');
    const fwd = model.forward(ids, tgt, batch);
    const loss = (await b.read(fwd.loss))[0]!;
    const written: TensorToWrite[] = [{ name: 'loss', dtype: 'F32', shape: [1], data: Float32Array.of(loss) }];
    for (const [i, blk] of fwd.saved.blocks.entries()) {
      if (blk.attn?.kind === 'nsa') {
        const sel = blk.attn.sel;
        const data = (await b.read(sel)) as Int32Array;
        written.push({ name: `route.blocks.${i}.attn.sel`, dtype: 'I32', shape: [...sel.shape], data });
      }
      if (blk.ffn.kind !== 'moe') continue;
      const idx = blk.ffn.saved.idx;
      written.push({
        name: `route.blocks.${i}.ffn.idx`,
        dtype: 'I32',
        shape: [...idx.shape],
        data: (await b.read(idx)) as Int32Array,
      });
    }
    model.backward(fwd.saved);
    for (const p of model.params.trainable()) {
      written.push({
        name: `grad.${p.name}`,
        dtype: 'F32',
        shape: [...p.shape],
        data: (await b.read(p.grad!)) as Float32Array,
      });
    }
    for (const t of [fwd.loss, ...fwd.routerCounts, ids, tgt]) t.free();
    writeSafetensors(out, written, { dtype: opts.precision, device: b.name, source: 'nmoe' });
    return { loss, out };
  } finally {
    model.free();
  }
}

// ------------------------------------------------------------------------------------------------------------
// command line

interface CliOptions {
  configPath: string;
  device: 'cpu' | 'cuda';
  precision: Precision;
  outDir: string;
  torch: boolean;
  torchDevice: string;
  python: string;
  ownRouting: boolean;
  biasStd: number;
  overrides: string[];
  compare: [string, string] | null;
  reuse: string | null;
}

class UsageError extends Error {}

function parseArgs(argv: string[]): CliOptions {
  const o: CliOptions = {
    configPath: defaultConfigPath(),
    device: 'cpu',
    precision: 'fp32',
    outDir: 'runs/parity',
    torch: false,
    torchDevice: 'auto',
    python: process.env.PYTHON ?? 'python3',
    ownRouting: false,
    biasStd: 0.01,
    overrides: [],
    compare: null,
    reuse: null,
  };
  const value = (i: number, flag: string): string => {
    const v = argv[i + 1];
    if (v === undefined || v.startsWith('--')) throw new UsageError(`${flag} needs a value`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const take = () => inline ?? value(i++, flag);
    switch (flag) {
      case '--config':
        o.configPath = take();
        break;
      case '--device': {
        const d = take();
        if (d !== 'cpu' && d !== 'cuda') throw new UsageError(`--device must be cpu or cuda, got ${d}`);
        o.device = d;
        break;
      }
      case '--dtype': {
        const d = take();
        if (d !== 'fp32' && d !== 'bf16') throw new UsageError(`--dtype must be fp32 or bf16, got ${d}`);
        o.precision = d;
        break;
      }
      case '--out':
        o.outDir = take();
        break;
      case '--torch':
        o.torch = true;
        break;
      case '--torch-device':
        o.torchDevice = take();
        break;
      case '--python':
        o.python = take();
        break;
      case '--own-routing':
        o.ownRouting = true;
        break;
      case '--bias-std':
        o.biasStd = Number(take());
        break;
      case '--compare':
        o.compare = [value(i, flag), value(i + 1, flag)];
        i += 2;
        break;
      case '--reuse':
        o.reuse = take();
        break;
      case '--help':
      case '-h':
        throw new UsageError('');
      default:
        if (flag.startsWith('--') && inline !== undefined) o.overrides.push(a);
        else throw new UsageError(`unknown argument ${a} (config overrides are written --key=value)`);
    }
  }
  if (o.reuse && o.overrides.length)
    throw new UsageError('--reuse takes the config from its folder; drop the --key=value overrides');
  return o;
}

const USAGE = `usage: node --import tsx tools/parity.ts [--config configs/tiny.toml] [--device cpu|cuda] [--dtype fp32|bf16]
         [--out runs/parity] [--torch] [--torch-device auto|cpu|cuda] [--python python3] [--own-routing]
         [--bias-std 0.01] [--reuse DIR] [--key=value ...]
       node --import tsx tools/parity.ts --compare got.safetensors ref.safetensors [--dtype fp32|bf16]`;

export async function main(argv: string[]): Promise<number> {
  let o: CliOptions;
  try {
    o = parseArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    if (err.message) process.stderr.write(`parity: ${err.message}\n`);
    process.stderr.write(`${USAGE}\n`);
    return err.message ? 2 : 0;
  }
  const tol = TOLERANCES[o.precision];
  if (o.compare) {
    const c = compareFiles(o.compare[0], o.compare[1], tol);
    for (const line of formatComparison(c, { got: 'first', ref: 'second' })) console.log(line);
    return c.ok ? 0 : 1;
  }

  let files: ParityFiles, cfg: ParityConfig;
  if (o.reuse) {
    // The config, weights and batch of an earlier run; this run's results go to --out.
    makeDirs(o.outDir);
    files = { ...parityFiles(o.reuse), grads: parityFiles(o.outDir).grads };
    cfg = readParityConfig(files.config);
  } else {
    ({ files, cfg } = await prepareParity({
      configPath: o.configPath,
      overrides: o.overrides,
      device: o.device,
      precision: o.precision,
      outDir: o.outDir,
      biasStd: o.biasStd,
    }));
  }
  console.log(
    `parity: ${cfg.n_layers} layers (${cfg.n_dense_layers} dense), ${cfg.attn}, dim ${cfg.dim}, ` +
      `${cfg.n_routed_experts} experts top-${cfg.n_activated_experts}, batch ${cfg.batch_size} x ${cfg.seq_len}, ${o.precision}, nmoe on ${o.device}`,
  );
  const { loss } = await nmoeGrads(files, { device: o.device, precision: o.precision });
  console.log(`nmoe: loss ${loss.toFixed(7)} -> ${files.grads}`);
  if (!o.torch) {
    console.log(`files in ${o.outDir}; add --torch to run tools/torch_ref.py and compare`);
    return 0;
  }
  const script = fileURLToPath(new URL('./torch_ref.py', import.meta.url));
  const refOut = join(o.outDir, 'torch_grads.safetensors');
  const args = [
    script,
    '--config',
    files.config,
    '--weights',
    files.weights,
    '--batch',
    files.batch,
    '--out',
    refOut,
    '--dtype',
    o.precision,
    '--device',
    o.torchDevice,
    ...(o.ownRouting ? [] : ['--routing', files.grads]),
  ];
  console.log(`$ ${o.python} ${args.join(' ')}`);
  const r = spawnSync(o.python, args, { stdio: 'inherit' });
  if (r.error || r.status !== 0) {
    console.error(`parity: torch_ref.py failed (${r.error?.message ?? `exit code ${r.status}`})`);
    return 1;
  }
  const c = compareFiles(files.grads, refOut, tol);
  for (const line of formatComparison(c, { got: 'nmoe', ref: 'torch' })) console.log(line);
  return c.ok ? 0 : 1;
}

await runIfScript(import.meta.url, 'parity', main);
