/**
 * GPU check of the Hopper grouped expert GEMMs (src/tensor/cuda/kernels/grouped_sm90.cu: wgmma fed by TMA)
 * against the mma.sync ones (grouped.cu) and an fp64 host product, on the same random bf16 inputs, for several
 * routings; then times both. No Python, no test runner: one command on the GPU machine.
 *
 *   node --import tsx tools/gemm-check.ts [--cases small,odd,uniform,skewed] [--ops PREFIXES] [--iters 20]
 *        [--no-variants] [--timeout 600] [--out DIR]
 *
 * Cases: `small` (1000 rows, din 256, dout 192, 8 experts, two of them empty), `odd` (701 rows, din 200, dout 136:
 * k and column tails), `uniform` (moonlet6: 49152 rows = 8192 tokens x top-6 over 64 experts, dim 2048, expert
 * hidden 1408), `skewed` (moonlet6 sizes, one expert with 40% of the rows, eight empty ones including the last,
 * experts of 1, 7, 63, 64, 65, 128, 129, 255 and 257 rows). Operations per case, as src/model/ffn.ts calls them:
 * fwd-up x @ W1 (din -> dout), fwd-down a @ W2 (dout -> din), dgrad-down dy @ W2^T, dgrad-up dh @ W1^T, wgrad-up
 * dW1 += x^T dh, wgrad-down dW2 += a^T dy, and the fused forms: swiglu-up (h1 = x @ W1, h3 = x @ W3, a = silu(h1) h3
 * in one kernel) and dgrad-up-sum (dh @ W1^T + dh3 @ W3^T as one product); wgrad-up/pingpong and
 * wgrad-down/pingpong, the weight gradients on the ping-pong kernel (NMOE_WGRAD=pingpong,
 * grouped_wgrad_pingpong_sm90.cu), checked as the others and timed beside the default (cooperative) kernel;
 * `uniform` also runs the other tile variants (forward 128 wide, the other weight-gradient tile). --ops keeps the
 * operations whose id starts with one of the comma-separated prefixes (`--ops wgrad`: the weight gradients only).
 *
 * Each forward / input-gradient check: outputs poisoned with NaN first, inputs with 40 rows past the last segment;
 * every segment row must be written (no NaN left), the 40 rows must stay NaN; ||new - old|| / ||old|| < 5e-3 over
 * the segment rows; rows at segment and tile edges against an fp64 product, for both kernels. On a failure: the first
 * mismatches, where they fall in the tile, and (for N-major B) whether the run with the descriptor's LBO and SBO
 * swapped passes. Each weight-gradient check: dw starts random (accumulate semantics), experts with no rows must keep
 * their dw bit for bit, ||dw_new - dw_old|| / ||dw_old - dw_start|| < 5e-3, entries at tile edges of several experts
 * against dw_start + the fp64 product, and a second accumulation against dw_start + 2x the product.
 * Timing: the median of --iters runs after 3 warm-ups, device events, TFLOPS as 2 rows din dout / time.
 *
 * Each case runs in a child process: a kernel that kills the CUDA context (or hangs past --timeout seconds) costs
 * only its own operation; the case resumes in a fresh child at the next one. A pipeline stall is caught by the
 * kernels' watchdog (1 s) and reported. At the end: the SASS evidence (HGMMA, UTMALDG/UTMASTG and local-memory
 * instructions per kernel, from cuobjdump on the NVRTC-compiled cubin) and a summary table; exit code 1 when anything
 * failed. --out DIR also writes results.json there.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { roundToBf16 } from '../src/tensor/bf16.ts';
import type { CudaBackend } from '../src/tensor/cuda/backend.ts';
import type { WgradSchedule } from '../src/tensor/cuda/grouped-options.ts';
import type { Tensor } from '../src/tensor/tensor.ts';
import { philoxUniform } from '../src/util/philox.ts';
import { makeDirs } from '../src/util/dirs.ts';

const SCRIPT = fileURLToPath(import.meta.url);
const ROOT = dirname(dirname(SCRIPT));
const TOL = 5e-3;
const PAD_ROWS = 40;

const argv = process.argv.slice(2);
const arg = (flag: string): string | undefined => (argv.includes(flag) ? argv[argv.indexOf(flag) + 1] : undefined);
const ITERS = Number(arg('--iters') ?? 20);

// --- cases and operations ---------------------------------------------------------------------------------------

interface CaseSpec {
  name: string;
  experts: number;
  /** The model dim (x's width) and the expert hidden size. */
  d: number;
  f: number;
  counts: number[];
  variants: boolean;
}

function uniformCounts(rows: number, experts: number, stream: number): number[] {
  const u = new Float32Array(rows);
  philoxUniform(u, 11, stream);
  const c = new Array<number>(experts).fill(0);
  for (const x of u) c[Math.min(experts - 1, Math.floor(x * experts))]!++;
  return c;
}

function skewedCounts(rows: number, experts: number): number[] {
  const c = new Array<number>(experts).fill(-1);
  c[0] = Math.round(0.4 * rows);
  for (const e of [1, 2, 3, 4, 5, 20, 41, experts - 1]) c[e] = 0;
  Object.assign(c, { 6: 1, 33: 1, 7: 7, 8: 129, 10: 64, 11: 63, 12: 65, 50: 128, 51: 255, 52: 257 });
  const free = c.map((v, e) => (v < 0 ? e : -1)).filter((e) => e >= 0);
  const left = rows - c.reduce((s, v) => s + Math.max(0, v), 0);
  free.forEach((e) => {
    c[e] = 0;
  });
  const u = new Float32Array(left);
  philoxUniform(u, 12, 1);
  for (const x of u) c[free[Math.min(free.length - 1, Math.floor(x * free.length))]!]!++;
  return c;
}

const CASE_SPECS: Record<string, () => CaseSpec> = {
  small: () => ({
    name: 'small',
    experts: 8,
    d: 256,
    f: 192,
    counts: [0, 130, 1, 257, 0, 400, 7, 205],
    variants: false,
  }),
  odd: () => ({ name: 'odd', experts: 5, d: 200, f: 136, counts: [300, 0, 1, 64, 336], variants: false }),
  uniform: () => ({
    name: 'uniform',
    experts: 64,
    d: 2048,
    f: 1408,
    counts: uniformCounts(49152, 64, 1),
    variants: true,
  }),
  skewed: () => ({ name: 'skewed', experts: 64, d: 2048, f: 1408, counts: skewedCounts(49152, 64), variants: false }),
};

/** A case by name, with --no-variants applied (parent and child must agree on the operation list). */
function caseFor(name: string): CaseSpec {
  const make = CASE_SPECS[name];
  if (!make) throw new Error(`unknown case ${name}; cases: ${Object.keys(CASE_SPECS).join(', ')}`);
  const c = make();
  if (argv.includes('--no-variants')) c.variants = false;
  return c;
}

type InputName = 'x' | 'a' | 'dy' | 'dh' | 'dh3';
type WeightName = 'W1' | 'W2' | 'W3';
interface FwdOp {
  kind: 'fwd';
  id: string;
  input: InputName;
  weight: WeightName;
  transB: boolean;
  bn: 128 | 256;
  variant: boolean;
  /** groupedMatmulSum: plus this product. */
  plus?: { input: InputName; weight: WeightName };
  /** groupedSwiglu: h1 = input @ weight, h3 = input @ this weight, a = silu(h1) h3. */
  swiglu?: WeightName;
}
interface WgradOp {
  kind: 'wgrad';
  id: string;
  input: InputName;
  grad: InputName;
  /** dw's shape: W1's [E, d, f] or W2's [E, f, d]. */
  weight: 'W1' | 'W2';
  /** The Hopper kernel; the cooperative one's tile. */
  schedule: WgradSchedule;
  tile: 'auto' | '128x256' | '256x128';
  variant: boolean;
}
type Op = FwdOp | WgradOp;

function opsFor(c: CaseSpec): Op[] {
  const fwd = (id: string, input: InputName, weight: 'W1' | 'W2', transB: boolean, bn: 128 | 256 = 256): FwdOp => ({
    kind: 'fwd',
    id,
    input,
    weight,
    transB,
    bn,
    variant: bn !== 256,
  });
  const wgrad = (
    id: string,
    input: InputName,
    grad: InputName,
    weight: 'W1' | 'W2',
    schedule: WgradSchedule = 'cooperative',
    tile: WgradOp['tile'] = 'auto',
  ): WgradOp => ({ kind: 'wgrad', id, input, grad, weight, schedule, tile, variant: tile !== 'auto' });
  const ops: Op[] = [
    fwd('fwd-up', 'x', 'W1', false),
    fwd('fwd-down', 'a', 'W2', false),
    fwd('dgrad-down', 'dy', 'W2', true),
    fwd('dgrad-up', 'dh', 'W1', true),
    wgrad('wgrad-up', 'x', 'dh', 'W1'),
    wgrad('wgrad-down', 'a', 'dy', 'W2'),
    // The fused forms src/model/ffn.ts uses: gate and up projections with the SwiGLU; dh1 @ W1^T + dh3 @ W3^T.
    { ...fwd('swiglu-up', 'x', 'W1', false, 128), variant: false, swiglu: 'W3' },
    { ...fwd('dgrad-up-sum', 'dh', 'W1', true), plus: { input: 'dh3', weight: 'W3' } },
    wgrad('wgrad-up/pingpong', 'x', 'dh', 'W1', 'pingpong'),
    wgrad('wgrad-down/pingpong', 'a', 'dy', 'W2', 'pingpong'),
  ];
  if (c.variants) {
    ops.push(
      fwd('fwd-up/bn128', 'x', 'W1', false, 128),
      fwd('fwd-down/bn128', 'a', 'W2', false, 128),
      fwd('dgrad-down/bn128', 'dy', 'W2', true, 128),
      fwd('dgrad-up/bn128', 'dh', 'W1', true, 128),
    );
    // The other weight-gradient tile than auto picks (auto: 256x128 for dW1 [2048, 1408], 128x256 for dW2 [1408, 2048]).
    ops.push(
      wgrad('wgrad-up/128x256', 'x', 'dh', 'W1', 'cooperative', '128x256'),
      wgrad('wgrad-down/256x128', 'a', 'dy', 'W2', 'cooperative', '256x128'),
    );
  }
  const prefixes = arg('--ops')?.split(',').filter(Boolean);
  return prefixes ? ops.filter((op) => prefixes.some((p) => op.id.startsWith(p))) : ops;
}

interface Result {
  case: string;
  op: string;
  shape?: string;
  kernel?: string;
  newMs?: number;
  oldMs?: number;
  /** A ping-pong weight gradient: the default (cooperative) kernel's time on the same call. */
  cooperativeMs?: number;
  tflopsNew?: number;
  tflopsOld?: number;
  errVsOld?: number;
  errNewExact?: number;
  errOldExact?: number;
  verdict: 'PASS' | 'FAIL' | 'ERROR';
  notes: string[];
}

// --- child: one case ------------------------------------------------------------------------------------------

function relErr(a: ArrayLike<number>, b: ArrayLike<number>, n = a.length): number {
  let d = 0,
    s = 0;
  for (let i = 0; i < n; i++) {
    d += (a[i]! - b[i]!) ** 2;
    s += b[i]! ** 2;
  }
  return s === 0 ? Math.sqrt(d) : Math.sqrt(d / s);
}

const fmt = (x: number | undefined, digits = 2) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits));
const sci = (x: number | undefined) => (x === undefined ? '-' : Number.isFinite(x) ? x.toExponential(1) : String(x));

/** What the checks use of the CUDA backend (and what the CPU self-test's stand-in provides). */
type CheckBackend = Pick<
  CudaBackend,
  | 'groupedGemm'
  | 'lastGroupedLaunch'
  | 'empty'
  | 'fill'
  | 'fillNormal'
  | 'copy'
  | 'read'
  | 'view'
  | 'upload'
  | 'synchronize'
  | 'moeSegments'
  | 'groupedMatmulInto'
  | 'groupedMatmulSumInto'
  | 'groupedSwigluInto'
  | 'groupedMatmulWeightGrad'
  | 'takeGroupedWatchdog'
> & {
  dev: { info: { name: string; arch: string; multiprocessors: number }; startTiming(): () => () => number };
};

interface Ctx {
  b: CheckBackend;
  c: CaseSpec;
  rows: number;
  padded: number;
  offsets: number[];
  seg: { offsets: Tensor; free(): void };
  t: Record<InputName | WeightName, Tensor>;
}

async function makeCtx(b: CheckBackend, c: CaseSpec): Promise<Ctx> {
  const rows = c.counts.reduce((s, v) => s + v, 0),
    padded = rows + PAD_ROWS;
  const offsets = [0];
  for (const n of c.counts) offsets.push(offsets[offsets.length - 1]! + n);
  const counts = b.upload(Int32Array.from(c.counts), [c.experts], 'i32');
  const seg = b.moeSegments(counts, rows);
  const mk = (shape: number[], std: number, stream: number) => {
    const t = b.empty(shape, 'bf16');
    b.fillNormal(t, { std, seed: 2024, stream });
    return t;
  };
  const t = {
    x: mk([padded, c.d], 1, 1),
    a: mk([padded, c.f], 1, 2),
    dy: mk([padded, c.d], 1, 3),
    dh: mk([padded, c.f], 1, 4),
    dh3: mk([padded, c.f], 1, 7),
    W1: mk([c.experts, c.d, c.f], 0.05, 5),
    W2: mk([c.experts, c.f, c.d], 0.05, 6),
    W3: mk([c.experts, c.d, c.f], 0.05, 8),
  };
  await b.synchronize();
  return { b, c, rows, padded, offsets, seg, t };
}

/** Median milliseconds of ITERS runs of fn after 3 warm-ups (device events around each). */
async function timeMs(b: CheckBackend, fn: () => void): Promise<number> {
  for (let i = 0; i < 3; i++) fn();
  await b.synchronize();
  const ends: (() => number)[] = [];
  for (let i = 0; i < ITERS; i++) {
    const stop = b.dev.startTiming();
    fn();
    ends.push(stop());
  }
  const ms = ends.map((f) => f()).sort((p, q) => p - q);
  return ms[Math.floor(ms.length / 2)]!;
}

async function readF32(b: CheckBackend, t: Tensor, offset?: number, shape?: number[]): Promise<Float32Array> {
  return (await b.read(shape ? b.view(t, shape, offset) : t)) as Float32Array;
}

function expertOfRow(offsets: number[], r: number): number {
  let e = 0;
  while (offsets[e + 1]! <= r) e++;
  return e;
}

/** Experts worth a closer look: the first and last non-empty, the largest, and those with a telling row count. */
function spotExperts(c: CaseSpec): number[] {
  const nonEmpty = c.counts.map((n, e) => (n > 0 ? e : -1)).filter((e) => e >= 0);
  const largest = nonEmpty.reduce((m, e) => (c.counts[e]! > c.counts[m]! ? e : m), nonEmpty[0]!);
  const telling = nonEmpty.filter((e) => [1, 7, 63, 64, 65, 129, 257].includes(c.counts[e]!));
  return [...new Set([nonEmpty[0]!, largest, ...telling, nonEmpty[nonEmpty.length - 1]!])].slice(0, 7);
}

/** Row r of x @ W[e] (or W[e]^T) in fp64, from the host copies; W[e] cached per (tensor, expert). */
async function exactRow(
  b: CheckBackend,
  X: Tensor,
  W: Tensor,
  transB: boolean,
  r: number,
  e: number,
  cache: Map<string, Float32Array>,
  key: string,
): Promise<Float64Array> {
  const [din, dout] = transB ? [W.shape[2]!, W.shape[1]!] : [W.shape[1]!, W.shape[2]!];
  const ck = `${key}:${e}`;
  if (!cache.has(ck)) cache.set(ck, await readF32(b, W, e * din * dout, [din * dout]));
  const we = cache.get(ck)!,
    xr = await readF32(b, X, r * din, [din]);
  const acc = new Float64Array(dout);
  if (transB) {
    for (let col = 0; col < dout; col++) {
      let s = 0;
      for (let k = 0; k < din; k++) s += xr[k]! * we[col * din + k]!;
      acc[col] = s;
    }
  } else {
    for (let k = 0; k < din; k++) {
      const xv = xr[k]!;
      if (xv !== 0) for (let col = 0; col < dout; col++) acc[col]! += xv * we[k * dout + col]!;
    }
  }
  return acc;
}

/** Forward-shaped checks: a grouped product, a sum of two (op.plus), or the fused SwiGLU's three outputs (op.swiglu). */
async function checkFwd(ctx: Ctx, op: FwdOp): Promise<Result> {
  const { b, c, rows, padded, offsets } = ctx;
  const X = ctx.t[op.input],
    W = ctx.t[op.weight];
  const [din, dout] = op.transB ? [W.shape[2]!, W.shape[1]!] : [W.shape[1]!, W.shape[2]!];
  const din2 = op.plus ? (op.transB ? ctx.t[op.plus.weight].shape[2]! : ctx.t[op.plus.weight].shape[1]!) : 0;
  const outNames = op.swiglu ? ['h1', 'h3', 'a'] : ['y'];
  const what = op.swiglu
    ? `h1, h3, a = swiglu(${op.input} @ ${op.weight}, ${op.input} @ ${op.swiglu})`
    : op.plus
      ? `${op.input} @ ${op.weight}^T + ${op.plus.input} @ ${op.plus.weight}^T`
      : '';
  const res: Result = {
    case: c.name,
    op: op.id,
    shape: `${rows} x ${din + din2} -> ${dout}${op.transB ? ' (W^T)' : ''}${what ? `: ${what}` : ''}`,
    verdict: 'PASS',
    notes: [],
  };
  const fail = (note: string) => {
    res.verdict = 'FAIL';
    res.notes.push(note);
  };
  const run = (path: 'wgmma' | 'mma', ys: Tensor[], flags = 0) => {
    Object.assign(b.groupedGemm, { path, flags, fwdTileN: op.bn });
    if (op.swiglu) b.groupedSwigluInto(X, W, ctx.t[op.swiglu], ctx.seg.offsets, { h1: ys[0]!, h3: ys[1]!, a: ys[2]! });
    else if (op.plus)
      b.groupedMatmulSumInto(X, W, ctx.t[op.plus.input], ctx.t[op.plus.weight], ctx.seg.offsets, op.transB, ys[0]!);
    else b.groupedMatmulInto(X, W, ctx.seg.offsets, op.transB, ys[0]!);
  };
  const yNew = outNames.map(() => b.empty([padded, dout], 'bf16')),
    yOld = outNames.map(() => b.empty([padded, dout], 'bf16'));
  try {
    for (const y of [...yNew, ...yOld]) b.fill(y, Number.NaN);
    b.lastGroupedLaunch = null;
    run('wgmma', yNew);
    const l = b.lastGroupedLaunch as CudaBackend['lastGroupedLaunch'];
    res.kernel = l ? `${l.name} grid ${l.grid} smem ${l.smem}` : 'mma.sync (sm_90a path not taken)';
    if (!l) fail('the sm_90a kernel did not run (device not sm_90a, or the operands do not qualify)');
    const stall = await b.takeGroupedWatchdog();
    if (stall) fail(`watchdog: ${stall}`);
    run('mma', yOld);
    const hNew: Float32Array[] = [],
      hOld: Float32Array[] = [];
    for (let o = 0; o < outNames.length; o++) {
      hNew.push(await readF32(b, yNew[o]!));
      hOld.push(await readF32(b, yOld[o]!));
    }
    const errs: number[] = [];
    for (let o = 0; o < outNames.length; o++) {
      const hn = hNew[o]!,
        ho = hOld[o]!,
        name = outNames.length > 1 ? `${outNames[o]}: ` : '';
      // Every segment row written, the padding rows untouched.
      let nanRows = 0,
        touched = 0,
        oldNanRows = 0,
        firstNan = -1;
      for (let r = 0; r < padded; r++) {
        let nan = 0,
          nanOld = 0;
        for (let j = r * dout; j < (r + 1) * dout; j++) {
          if (Number.isNaN(hn[j]!)) nan++;
          if (Number.isNaN(ho[j]!)) nanOld++;
        }
        if (r < rows) {
          if (nan > 0) {
            nanRows++;
            if (firstNan < 0) firstNan = r;
          }
          if (nanOld > 0) oldNanRows++;
        } else if (nan < dout) touched++;
      }
      if (nanRows)
        fail(
          `${name}${nanRows} segment rows not (fully) written or NaN, first row ${firstNan} (expert ${expertOfRow(offsets, firstNan)})`,
        );
      if (oldNanRows) res.notes.push(`${name}old kernel: ${oldNanRows} rows with NaN`);
      if (touched) fail(`${name}${touched} of the ${PAD_ROWS} rows past the last segment were written`);
      const err = relErr(hn, ho, rows * dout);
      errs.push(err);
      if (!(err < TOL)) {
        fail(`${name}||new - old|| / ||old|| = ${sci(err)}`);
        res.notes.push(...mismatchReport(hn, ho, rows, dout, offsets, op.swiglu ? 128 : op.bn));
      }
    }
    res.errVsOld = Math.max(...errs.map((e) => (Number.isNaN(e) ? Infinity : e)));
    if (!(res.errVsOld < TOL) && !op.transB && l && !op.swiglu) {
      for (const y of yNew) b.fill(y, Number.NaN);
      run('wgmma', yNew, 1);
      await b.takeGroupedWatchdog();
      const swapped = relErr(await readF32(b, yNew[0]!), hOld[0]!, rows * dout);
      res.notes.push(
        `with the N-major descriptor's LBO and SBO swapped (flags=1): err ${sci(swapped)}${swapped < TOL ? ' -> PASSES: swap them in grouped_sm90.cu' : ''}`,
      );
    }

    if (!op.variant) {
      // fp64 rows at segment and tile edges of a few experts.
      const spot: number[] = [];
      for (const e of spotExperts(c)) {
        const s0 = offsets[e]!,
          s1 = offsets[e + 1]!;
        for (const r of [s0, s0 + 1, s0 + 63, s0 + 64, s0 + 127, s0 + 128, s1 - 1])
          if (r >= s0 && r < s1 && !spot.includes(r)) spot.push(r);
      }
      const cache = new Map<string, Float32Array>();
      const exact: number[][] = outNames.map(() => []),
        gotNew: number[][] = outNames.map(() => []),
        gotOld: number[][] = outNames.map(() => []);
      let worst = { err: 0, row: -1 };
      for (const r of spot) {
        const e = expertOfRow(offsets, r);
        const p = await exactRow(b, X, W, op.transB, r, e, cache, op.weight);
        let want: Float64Array[] = [p];
        if (op.plus) {
          const q = await exactRow(
            b,
            ctx.t[op.plus.input],
            ctx.t[op.plus.weight],
            op.transB,
            r,
            e,
            cache,
            op.plus.weight,
          );
          want = [p.map((v, i) => v + q[i]!)];
        } else if (op.swiglu) {
          const u = await exactRow(b, X, ctx.t[op.swiglu], false, r, e, cache, op.swiglu);
          // a from the rounded h1 and h3, as the kernel (and the unfused swiglu) computes it.
          want = [
            p,
            u,
            p.map((g, i) => {
              const gr = roundToBf16(g),
                ur = roundToBf16(u[i]!);
              return (gr / (1 + Math.exp(-gr))) * ur;
            }),
          ];
        }
        for (let o = 0; o < outNames.length; o++) {
          const rowNew = hNew[o]!.subarray(r * dout, (r + 1) * dout);
          const err = relErr(rowNew, want[o]!);
          if (err > worst.err) worst = { err, row: r };
          exact[o]!.push(...want[o]!);
          gotNew[o]!.push(...rowNew);
          gotOld[o]!.push(...hOld[o]!.subarray(r * dout, (r + 1) * dout));
        }
      }
      const en = outNames.map((_, o) => relErr(gotNew[o]!, exact[o]!)),
        eo = outNames.map((_, o) => relErr(gotOld[o]!, exact[o]!));
      res.errNewExact = Math.max(...en);
      res.errOldExact = Math.max(...eo);
      if (!(res.errNewExact < TOL))
        fail(
          `fp64 rows: new err ${en.map(sci).join(' / ')}, worst row ${worst.row} (expert ${expertOfRow(offsets, worst.row)}) ${sci(worst.err)}`,
        );
      if (!(res.errOldExact < TOL)) res.notes.push(`the old path is off the fp64 rows too: ${eo.map(sci).join(' / ')}`);
    }

    if (!stall && (res.verdict === 'PASS' || res.errVsOld < 1)) {
      res.newMs = await timeMs(b, () => run('wgmma', yNew));
      if (await b.takeGroupedWatchdog()) fail('watchdog fired while timing');
      if (!op.variant) res.oldMs = await timeMs(b, () => run('mma', yOld));
      const flops = 2 * rows * (din + din2) * dout * (op.swiglu ? 2 : 1);
      res.tflopsNew = flops / res.newMs / 1e9;
      if (res.oldMs) res.tflopsOld = flops / res.oldMs / 1e9;
    }
  } finally {
    Object.assign(b.groupedGemm, { path: 'wgmma', flags: 0, fwdTileN: 256 });
    for (const y of [...yNew, ...yOld]) y.free();
  }
  return res;
}

/** Where the mismatches of a failed forward check fall: the first few, and counts by row and column within a tile. */
function mismatchReport(
  got: Float32Array,
  want: Float32Array,
  rows: number,
  dout: number,
  offsets: number[],
  bn: number,
): string[] {
  let ss = 0;
  for (let i = 0; i < rows * dout; i++) ss += want[i]! ** 2;
  const rms = Math.sqrt(ss / Math.max(1, rows * dout));
  const first: string[] = [];
  const byRow = new Array<number>(8).fill(0),
    byCol = new Array<number>(8).fill(0);
  let bad = 0,
    e = 0;
  for (let r = 0; r < rows; r++) {
    while (offsets[e + 1]! <= r) e++;
    const inTile = (r - offsets[e]!) % 128;
    for (let col = 0; col < dout; col++) {
      const g = got[r * dout + col]!,
        w = want[r * dout + col]!;
      if (!(Math.abs(g - w) <= 0.02 * (Math.abs(w) + rms))) {
        bad++;
        byRow[inTile >> 4]!++;
        byCol[Math.floor(((col % bn) * 8) / bn)]!++;
        if (first.length < 8)
          first.push(
            `(row ${r}, expert ${e}, row-in-tile ${inTile}, col ${col}): new ${g.toPrecision(4)} old ${w.toPrecision(4)}`,
          );
      }
    }
  }
  return [
    `${bad} of ${rows * dout} elements off (${((100 * bad) / (rows * dout)).toFixed(2)}%); first: ${first.join('; ')}`,
    `off by row-in-tile /16: [${byRow}]; by column-in-tile /${bn / 8}: [${byCol}]`,
  ];
}

async function checkWgrad(ctx: Ctx, op: WgradOp, opIndex: number): Promise<Result> {
  const { b, c, rows, offsets } = ctx;
  const X = ctx.t[op.input],
    DY = ctx.t[op.grad];
  const [E, din, dout] = ctx.t[op.weight].shape as [number, number, number];
  const res: Result = {
    case: c.name,
    op: op.id,
    shape: `${rows} rows: [${din} x ${dout}] x ${E}`,
    verdict: 'PASS',
    notes: [],
  };
  const fail = (note: string) => {
    res.verdict = 'FAIL';
    res.notes.push(note);
  };
  const run = (path: 'wgmma' | 'mma', dw: Tensor, flags = 0, accumulate = true, wgrad = op.schedule) => {
    Object.assign(b.groupedGemm, { path, flags, wgrad, wgradTile: op.tile });
    b.groupedMatmulWeightGrad(X, DY, ctx.seg.offsets, dw, accumulate);
  };
  const dw0 = b.empty([E, din, dout], 'bf16'),
    dwNew = b.empty([E, din, dout], 'bf16'),
    dwOld = b.empty([E, din, dout], 'bf16');
  try {
    b.fillNormal(dw0, { std: 8, seed: 77, stream: 100 + opIndex });
    b.copy(dw0, dwNew);
    b.copy(dw0, dwOld);
    b.lastGroupedLaunch = null;
    run('wgmma', dwNew);
    const l = b.lastGroupedLaunch as CudaBackend['lastGroupedLaunch'];
    res.kernel = l ? `${l.name} grid ${l.grid} smem ${l.smem}` : 'mma.sync (sm_90a path not taken)';
    if (!l) fail('the sm_90a kernel did not run');
    const stall = await b.takeGroupedWatchdog();
    if (stall) fail(`watchdog: ${stall}`);
    run('mma', dwOld);

    // Whole-tensor comparison, a few experts at a time: increments against the old kernel's, empty experts exact.
    const per = din * dout,
      chunk = Math.max(1, Math.floor((16 << 20) / per));
    let dd = 0,
      ss = 0,
      nan = 0,
      zeroBad = 0;
    const badExperts: string[] = [];
    for (let e0 = 0; e0 < E; e0 += chunk) {
      const n = Math.min(chunk, E - e0);
      const [h0, hn, ho] = [
        await readF32(b, dw0, e0 * per, [n * per]),
        await readF32(b, dwNew, e0 * per, [n * per]),
        await readF32(b, dwOld, e0 * per, [n * per]),
      ];
      for (let i = 0; i < n; i++) {
        const e = e0 + i;
        let ed = 0,
          es = 0;
        for (let j = i * per; j < (i + 1) * per; j++) {
          const g = hn[j]!,
            w = ho[j]!;
          if (Number.isNaN(g)) nan++;
          ed += (g - w) ** 2;
          es += (w - h0[j]!) ** 2;
          if (c.counts[e] === 0 && g !== h0[j]) zeroBad++;
        }
        dd += ed;
        ss += es;
        if (es > 0 ? Math.sqrt(ed / es) > TOL : ed > 0)
          badExperts.push(`${e} (${c.counts[e]} rows): ${sci(es > 0 ? Math.sqrt(ed / es) : Math.sqrt(ed))}`);
      }
    }
    res.errVsOld = ss > 0 ? Math.sqrt(dd / ss) : Math.sqrt(dd);
    if (nan) fail(`${nan} NaN entries in dw`);
    if (zeroBad) fail(`${zeroBad} dw entries of experts with no rows changed`);
    if (!(res.errVsOld < TOL)) {
      fail(
        `||dw_new - dw_old|| / ||dw_old - dw_start|| = ${sci(res.errVsOld)}; experts off: ${badExperts.slice(0, 12).join(', ')}${badExperts.length > 12 ? ', ...' : ''}`,
      );
      const swapRun = async () => {
        b.copy(dw0, dwNew);
        run('wgmma', dwNew, 1);
        await b.takeGroupedWatchdog();
        let d2 = 0,
          s2 = 0;
        for (let e0 = 0; e0 < E; e0 += chunk) {
          const n = Math.min(chunk, E - e0);
          const [h0, hn, ho] = [
            await readF32(b, dw0, e0 * per, [n * per]),
            await readF32(b, dwNew, e0 * per, [n * per]),
            await readF32(b, dwOld, e0 * per, [n * per]),
          ];
          for (let j = 0; j < n * per; j++) {
            d2 += (hn[j]! - ho[j]!) ** 2;
            s2 += (ho[j]! - h0[j]!) ** 2;
          }
        }
        return Math.sqrt(d2 / Math.max(s2, 1e-30));
      };
      if (l) {
        const swapped = await swapRun();
        res.notes.push(
          `with the M/N-major descriptors' LBO and SBO swapped (flags=1): err ${sci(swapped)}${swapped < TOL ? ' -> PASSES: swap them in grouped_sm90.cu' : ''}`,
        );
        b.copy(dw0, dwNew);
        run('wgmma', dwNew);
        await b.takeGroupedWatchdog();
      }
    }

    if (!op.variant) {
      // fp64 entries at tile edges of a few experts, after one accumulation and after a second one.
      const ms = [...new Set([0, 1, 63, 64, 127, 128, 255, 256, din - 1].filter((m) => m < din))];
      const ns = [...new Set([0, 1, 127, 128, 255, 256, dout - 1].filter((n) => n < dout))];
      const want1: number[] = [],
        want2: number[] = [],
        got1: number[] = [],
        got2: number[] = [],
        gotOld: number[] = [];
      const experts = spotExperts(c);
      const grads = new Map<number, Float64Array>();
      for (const e of experts) {
        const s0 = offsets[e]!,
          cnt = offsets[e + 1]! - s0;
        const xs = await readF32(b, X, s0 * din, [cnt * din]),
          gs = await readF32(b, DY, s0 * dout, [cnt * dout]);
        const g = new Float64Array(ms.length * ns.length);
        for (let r = 0; r < cnt; r++) {
          for (let i = 0; i < ms.length; i++) {
            const xv = xs[r * din + ms[i]!]!;
            for (let j = 0; j < ns.length; j++) g[i * ns.length + j]! += xv * gs[r * dout + ns[j]!]!;
          }
        }
        grads.set(e, g);
      }
      const entries = async (t: Tensor, e: number) => {
        const h = await readF32(b, t, e * per, [per]);
        return ms.flatMap((m) => ns.map((n) => h[m * dout + n]!));
      };
      for (const e of experts) {
        const start = await entries(dw0, e),
          g = grads.get(e)!;
        start.forEach((v, i) => {
          want1.push(v + g[i]!);
          want2.push(v + 2 * g[i]!);
        });
        got1.push(...(await entries(dwNew, e)));
        gotOld.push(...(await entries(dwOld, e)));
      }
      run('wgmma', dwNew);
      const stall2 = await b.takeGroupedWatchdog();
      if (stall2) fail(`watchdog (second accumulation): ${stall2}`);
      for (const e of experts) got2.push(...(await entries(dwNew, e)));
      res.errNewExact = relErr(got1, want1);
      res.errOldExact = relErr(gotOld, want1);
      const err2 = relErr(got2, want2);
      if (!(res.errNewExact < TOL))
        fail(`fp64 entries (experts ${experts.join(', ')}): new err ${sci(res.errNewExact)}`);
      if (!(err2 < TOL)) fail(`second accumulation: err ${sci(err2)} against dw_start + 2 x the fp64 product`);
      else res.notes.push(`second accumulation err ${sci(err2)}`);
      if (!(res.errOldExact < TOL))
        res.notes.push(`the old kernel is off the fp64 entries too: ${sci(res.errOldExact)}`);
      // Empty experts once more, after two accumulations.
      for (const e of c.counts
        .map((n, i) => (n === 0 ? i : -1))
        .filter((i) => i >= 0)
        .slice(0, 3)) {
        const [h0, hn] = [await readF32(b, dw0, e * per, [per]), await readF32(b, dwNew, e * per, [per])];
        if (h0.some((v, i) => v !== hn[i])) fail(`expert ${e} has no rows but its dw changed after two accumulations`);
      }
    }

    // A gradient's first product writes instead of adding (accumulate false): from NaN, every entry written, equal to
    // the mma.sync kernels' write, experts with no rows zero.
    b.fill(dwNew, Number.NaN);
    b.fill(dwOld, Number.NaN);
    run('wgmma', dwNew, 0, false);
    const stallWrite = await b.takeGroupedWatchdog();
    if (stallWrite) fail(`watchdog (write): ${stallWrite}`);
    run('mma', dwOld, 0, false);
    {
      const per = din * dout,
        chunk = Math.max(1, Math.floor((16 << 20) / per));
      let dd = 0,
        ss = 0,
        nan = 0,
        emptyBad = 0;
      for (let e0 = 0; e0 < E; e0 += chunk) {
        const n = Math.min(chunk, E - e0);
        const [hn, ho] = [await readF32(b, dwNew, e0 * per, [n * per]), await readF32(b, dwOld, e0 * per, [n * per])];
        for (let j = 0; j < n * per; j++) {
          if (Number.isNaN(hn[j]!)) nan++;
          else if (c.counts[e0 + Math.floor(j / per)] === 0 && hn[j] !== 0) emptyBad++;
          dd += (hn[j]! - ho[j]!) ** 2;
          ss += ho[j]! ** 2;
        }
      }
      const errWrite = Math.sqrt(dd / Math.max(ss, 1e-30));
      if (nan) fail(`write: ${nan} dw entries not written (NaN left)`);
      if (emptyBad) fail(`write: ${emptyBad} dw entries of experts with no rows are not zero`);
      if (!(errWrite < TOL)) fail(`write: ||dw_new - dw_old|| / ||dw_old|| = ${sci(errWrite)}`);
      else res.notes.push(`write (accumulate = false) err ${sci(errWrite)}`);
    }

    if (!stall && (res.verdict === 'PASS' || res.errVsOld! < 1)) {
      res.notes.push(`write: ${fmt(await timeMs(b, () => run('wgmma', dwNew, 0, false)), 3)} ms`);
      res.newMs = await timeMs(b, () => run('wgmma', dwNew));
      if (await b.takeGroupedWatchdog()) fail('watchdog fired while timing');
      if (!op.variant) res.oldMs = await timeMs(b, () => run('mma', dwOld));
      if (op.schedule !== 'cooperative') {
        res.cooperativeMs = await timeMs(b, () => run('wgmma', dwOld, 0, true, 'cooperative'));
        res.notes.push(
          `cooperative kernel ${fmt(res.cooperativeMs, 3)} ms: ping-pong ${fmt(res.cooperativeMs / res.newMs, 2)}x of it`,
        );
      }
      const flops = 2 * rows * din * dout;
      res.tflopsNew = flops / res.newMs / 1e9;
      if (res.oldMs) res.tflopsOld = flops / res.oldMs / 1e9;
    }
  } finally {
    Object.assign(b.groupedGemm, { path: 'wgmma', flags: 0, wgrad: 'cooperative', wgradTile: 'auto' });
    for (const t of [dw0, dwNew, dwOld]) t.free();
  }
  return res;
}

async function child(caseName: string, from: number): Promise<void> {
  const c = caseFor(caseName);
  let b: CheckBackend, versions: string;
  if (argv.includes('--cpu-selftest')) {
    b = await cpuStandIn(arg('--cpu-fault'));
    versions = 'CPU stand-in (checks the checking code only)';
  } else {
    const { CudaBackend } = await import('../src/tensor/cuda/backend.ts');
    const { cu, outI32 } = await import('../src/tensor/cuda/driver.ts');
    const { nvrtcVersion } = await import('../src/tensor/cuda/nvrtc.ts');
    b = new CudaBackend(0);
    versions = `driver ${outI32('cuDriverGetVersion', cu.driverGetVersion)}, NVRTC ${nvrtcVersion()}`;
  }
  const info = b.dev.info;
  if (from === 0) {
    console.log(`[${c.name}] ${info.name}, ${info.arch}, ${info.multiprocessors} SMs, ${versions}`);
    console.log(
      `[${c.name}] ${c.counts.reduce((s, v) => s + v, 0)} rows over ${c.experts} experts (${c.counts.filter((n) => n === 0).length} empty, largest ${Math.max(...c.counts)}), d ${c.d}, f ${c.f}`,
    );
    if (info.arch !== 'sm_90a') console.log(`[${c.name}] WARNING: not an sm_90a device: the new path cannot run here`);
  }
  const ctx = await makeCtx(b, c);
  const ops = opsFor(c);
  for (let i = from; i < ops.length; i++) {
    const op = ops[i]!;
    console.log(`@@START ${i}`);
    const t0 = performance.now();
    let res: Result;
    try {
      res = op.kind === 'fwd' ? await checkFwd(ctx, op) : await checkWgrad(ctx, op, i);
    } catch (e) {
      res = {
        case: c.name,
        op: op.id,
        verdict: 'ERROR',
        notes: [
          String((e as Error).stack ?? e)
            .split('\n')
            .slice(0, 4)
            .join(' | '),
        ],
      };
      console.log(`@@RESULT ${JSON.stringify(res)}`);
      try {
        await b.synchronize();
        await b.read(ctx.seg.offsets);
      } catch (e2) {
        console.log(
          `[${c.name}] the CUDA context is lost (${(e2 as Error).message.split('\n')[0]}); resuming in a new process`,
        );
        process.exit(3);
      }
      continue;
    }
    console.log(
      `[${c.name}] ${op.id}: ${res.verdict} ${res.kernel ?? ''}; new ${fmt(res.newMs, 3)} ms (${fmt(res.tflopsNew, 0)} TFLOPS), old ${fmt(res.oldMs, 3)} ms; err vs old ${sci(res.errVsOld)}, vs fp64 ${sci(res.errNewExact)} (old ${sci(res.errOldExact)}) [${((performance.now() - t0) / 1000).toFixed(1)} s]`,
    );
    for (const n of res.notes) console.log(`    ${n}`);
    console.log(`@@RESULT ${JSON.stringify(res)}`);
  }
  console.log('@@DONE');
  process.exit(0);
}

/**
 * --cpu-selftest: the CPU backend standing in for both kernels, so that the checking code itself can be exercised
 * on a machine without a GPU (small and odd cases). --cpu-fault plants a bug in the "new" path: `row` (the last row
 * of each segment is not written), `pad` (a row past the segments is written), `value` (one output is off), `empty`
 * (an expert with no rows gets its dw changed), `overwrite` (the weight gradient overwrites instead of accumulating),
 * `write` (asked to write, the weight gradient adds into what dw held).
 */
async function cpuStandIn(fault: string | undefined): Promise<CheckBackend> {
  const { CpuBackend } = await import('../src/tensor/cpu/backend.ts');
  const { asCpu } = await import('../src/tensor/cpu/storage.ts');
  const cpu = new CpuBackend();
  const me: CheckBackend = {
    groupedGemm: { path: 'wgmma', wgrad: 'cooperative', fwdTileN: 256, wgradTile: 'auto', flags: 0 },
    lastGroupedLaunch: null,
    dev: {
      info: { name: 'CPU stand-in', arch: 'sm_90a', multiprocessors: 1 },
      startTiming: () => {
        const t0 = performance.now();
        return () => {
          const t1 = performance.now();
          return () => t1 - t0;
        };
      },
    },
    empty: (shape, dtype) => cpu.empty(shape, dtype),
    fill: (t, v) => cpu.fill(t, v),
    fillNormal: (t, init) => cpu.fillNormal(t, init),
    copy: (src, dst) => cpu.copy(src, dst),
    read: (t) => cpu.read(t),
    view: (t, shape, offset) => cpu.view(t, shape, offset),
    upload: (data, shape, dtype) => cpu.upload(data, shape, dtype),
    synchronize: () => cpu.synchronize(),
    moeSegments: (counts, maxRows) => cpu.moeSegments(counts, maxRows),
    takeGroupedWatchdog: async () => null,
    groupedMatmulInto(x, w, offsets, transB, y) {
      const isNew = me.groupedGemm.path === 'wgmma';
      if (isNew) me.lastGroupedLaunch = { name: `cpu<${me.groupedGemm.fwdTileN}>`, grid: 1, block: 1, smem: 0 };
      const full = asCpu(cpu.groupedMatmul(x, w, offsets, transB)),
        off = asCpu(offsets).i,
        yf = asCpu(y).f,
        dout = y.shape[1]!;
      const experts = off.length - 1;
      for (let e = 0; e < experts; e++) {
        const end = isNew && fault === 'row' && off[e + 1]! > off[e]! ? off[e + 1]! - 1 : off[e + 1]!;
        yf.set(full.f.subarray(off[e]! * dout, end * dout), off[e]! * dout);
      }
      if (isNew && fault === 'pad') yf.fill(0, off[experts]! * dout, (off[experts]! + 1) * dout);
      if (isNew && fault === 'value') yf[off[experts]! * dout - 1] = 1e3;
    },
    groupedMatmulSumInto(x1, w1, x2, w2, offsets, transB, y) {
      me.groupedMatmulInto(x1, w1, offsets, transB, y);
      const y2 = cpu.empty(y.shape, y.dtype);
      me.groupedMatmulInto(x2, w2, offsets, transB, y2);
      const yf = asCpu(y).f,
        y2f = asCpu(y2).f,
        end = asCpu(offsets).i[asCpu(offsets).i.length - 1]! * y.shape[1]!;
      for (let i = 0; i < end; i++) yf[i]! += y2f[i]!;
    },
    groupedSwigluInto(x, w1, w3, offsets, out) {
      me.groupedMatmulInto(x, w1, offsets, false, out.h1);
      me.groupedMatmulInto(x, w3, offsets, false, out.h3);
      const end = asCpu(offsets).i[asCpu(offsets).i.length - 1]! * out.h1.shape[1]!;
      const a = asCpu(cpu.swiglu(out.h1, out.h3)).f;
      asCpu(out.a).f.set(a.subarray(0, end));
    },
    groupedMatmulWeightGrad(x, dy, offsets, dw, accumulate = true) {
      const isNew = me.groupedGemm.path === 'wgmma';
      const { wgrad, wgradTile } = me.groupedGemm;
      if (isNew) me.lastGroupedLaunch = { name: `cpu<${wgrad}, ${wgradTile}>`, grid: 1, block: 1, smem: 0 };
      if (isNew && fault === 'overwrite') cpu.zero(dw);
      cpu.groupedMatmulWeightGrad(x, dy, offsets, dw, accumulate || (isNew && fault === 'write'));
      const off = asCpu(offsets).i;
      const empty = [...off.keys()].find((e) => e < off.length - 1 && off[e + 1] === off[e]);
      if (isNew && fault === 'empty' && empty !== undefined) asCpu(dw).f[empty * (dw.numel / (off.length - 1))] += 1;
    },
  };
  return me;
}

// --- parent ---------------------------------------------------------------------------------------------------

interface ChildRun {
  results: Result[];
  started: number | null;
  done: boolean;
  why: string;
}

function runChild(caseName: string, from: number, timeoutS: number): Promise<ChildRun> {
  return new Promise((resolveRun) => {
    const args = ['--import', 'tsx', SCRIPT, '--child', caseName, '--from', String(from), '--iters', String(ITERS)];
    for (const f of ['--no-variants', '--cpu-selftest']) if (argv.includes(f)) args.push(f);
    for (const f of ['--cpu-fault', '--ops']) if (arg(f)) args.push(f, arg(f)!);
    const p = spawn(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const run: ChildRun = { results: [], started: null, done: false, why: '' };
    const tail: string[] = [];
    let buf = '';
    const onLine = (line: string) => {
      if (line.startsWith('@@START ')) run.started = Number(line.slice(8));
      else if (line.startsWith('@@RESULT ')) {
        run.results.push(JSON.parse(line.slice(9)) as Result);
        run.started = null;
      } else if (line === '@@DONE') run.done = true;
      else {
        console.log(line);
        tail.push(line);
        if (tail.length > 6) tail.shift();
      }
    };
    p.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        onLine(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    p.stderr.on('data', (d: Buffer) => {
      for (const line of d.toString().split('\n').filter(Boolean)) {
        console.log(`  (stderr) ${line}`);
        tail.push(line);
        if (tail.length > 6) tail.shift();
      }
    });
    const timer = setTimeout(() => {
      run.why = `timed out after ${timeoutS} s`;
      p.kill('SIGKILL');
    }, timeoutS * 1000);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      if (buf) onLine(buf);
      if (!run.why) run.why = `child exited with ${code ?? signal}`;
      if (!run.done) run.why += `; last output: ${tail.join(' | ')}`;
      resolveRun(run);
    });
  });
}

/** SASS evidence of the newest cubin of each Hopper GEMM kernel file in the NVRTC cache. */
function sassReport(): string[] {
  const dir =
    process.env.NMOE_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'nmoe', 'kernels');
  if (!existsSync(dir)) return [`no NVRTC cache at ${dir}`];
  return ['grouped_sm90', 'grouped_wgrad_pingpong_sm90'].flatMap((stem) => {
    const cubins = readdirSync(dir)
      .filter((f) => f.startsWith(`${stem}-sm_90a-`) && f.endsWith('.cubin'))
      .map((f) => join(dir, f))
      .sort((p, q) => statSync(q).mtimeMs - statSync(p).mtimeMs);
    if (!cubins.length) return [`no ${stem} cubin in ${dir}`];
    const r = spawnSync('cuobjdump', ['-sass', cubins[0]!], { encoding: 'utf8', maxBuffer: 256 << 20 });
    if (r.status !== 0) return [`cuobjdump -sass ${cubins[0]} failed: ${r.error?.message ?? r.stderr}`];
    const lines = [`SASS of ${cubins[0]} (cuobjdump -sass):`];
    for (const part of r.stdout.split(/\n\s*Function : /).slice(1)) {
      const name = part.slice(0, part.indexOf('\n')).trim();
      const n = (re: RegExp) => (part.match(re) ?? []).length;
      lines.push(
        `  ${name}: HGMMA ${n(/\bHGMMA\./g)}, UTMALDG ${n(/\bUTMALDG\b/g)}, UTMASTG ${n(/\bUTMASTG\b/g)}, SYNCS ${n(/\bSYNCS\./g)}, LDL ${n(/\bLDL\b/g)}, STL ${n(/\bSTL\b/g)}, instructions ${n(/\/\*[0-9a-f]{4,}\*\/\s+[A-Z@]/g)}`,
      );
    }
    return lines;
  });
}

function summary(results: Result[]): string[] {
  const head = ['case', 'op', 'new ms', 'TFLOPS', 'old ms', 'TFLOPS', 'speedup', 'err/old', 'err/fp64', 'verdict'];
  const rows = results.map((r) => [
    r.case,
    r.op,
    fmt(r.newMs, 3),
    fmt(r.tflopsNew, 0),
    fmt(r.oldMs, 3),
    fmt(r.tflopsOld, 0),
    r.newMs && r.oldMs ? `${(r.oldMs / r.newMs).toFixed(2)}x` : '-',
    sci(r.errVsOld),
    sci(r.errNewExact),
    r.verdict,
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((s, i) => (i < 2 ? s.padEnd(w[i]!) : s.padStart(w[i]!))).join('  ');
  const out = [line(head), line(w.map((n) => '-'.repeat(n))), ...rows.map(line)];
  for (const cs of [...new Set(results.map((r) => r.case))]) {
    const get = (op: string) => results.find((r) => r.case === cs && r.op === op);
    const [dd, du, wu, wd] = [get('dgrad-down'), get('dgrad-up'), get('wgrad-up'), get('wgrad-down')];
    if (dd?.newMs && du?.newMs && wu?.newMs && wd?.newMs) {
      const bwdNew = dd.newMs + du.newMs + wu.newMs + wd.newMs,
        bwdOld = (dd.oldMs ?? 0) + (du.oldMs ?? 0) + (wu.oldMs ?? 0) + (wd.oldMs ?? 0);
      out.push(
        `${cs}: per weight matrix, input grad + weight grad: up ${fmt(du.newMs + wu.newMs, 3)} ms, down ${fmt(dd.newMs + wd.newMs, 3)} ms (old ${fmt((du.oldMs ?? 0) + (wu.oldMs ?? 0), 3)} / ${fmt((dd.oldMs ?? 0) + (wd.oldMs ?? 0), 3)}); all four ${fmt(bwdNew, 3)} ms (old ${fmt(bwdOld, 3)})`,
      );
    }
  }
  for (const r of results.filter((q) => q.cooperativeMs && q.newMs))
    out.push(
      `${r.case} ${r.op}: ${fmt(r.newMs, 3)} ms (${fmt(r.tflopsNew, 0)} TFLOPS) against the cooperative kernel's ${fmt(r.cooperativeMs, 3)} ms: ${fmt(r.cooperativeMs! / r.newMs!, 2)}x`,
    );
  const failed = results.filter((r) => r.verdict !== 'PASS');
  out.push(
    failed.length
      ? `${failed.length} of ${results.length} checks did not pass:`
      : `all ${results.length} checks passed`,
  );
  for (const r of failed) out.push(`  ${r.case} ${r.op}: ${r.verdict} ${r.kernel ?? ''}: ${r.notes.join(' / ')}`);
  return out;
}

async function parent(): Promise<void> {
  const names = (arg('--cases') ?? 'small,odd,uniform,skewed').split(',').filter(Boolean);
  names.forEach(caseFor);
  const timeoutS = Number(arg('--timeout') ?? 600);
  const results: Result[] = [];
  for (const name of names) {
    const ops = opsFor(caseFor(name));
    let from = 0;
    while (from < ops.length) {
      const run = await runChild(name, from, timeoutS);
      results.push(...run.results);
      if (run.done) break;
      if (run.started === null && run.results.length === 0) {
        // The child died before its first operation (no GPU, a compile error, out of memory): the case is lost.
        for (const op of ops.slice(from))
          results.push({ case: name, op: op.id, verdict: 'ERROR', notes: [`the case did not start: ${run.why}`] });
        console.log(`[${name}] ERROR: the case did not start: ${run.why}`);
        break;
      }
      const failedAt = run.started ?? from + run.results.length;
      if (failedAt >= ops.length) break;
      const res: Result = { case: name, op: ops[failedAt]!.id, verdict: 'ERROR', notes: [run.why] };
      results.push(res);
      console.log(`[${name}] ${ops[failedAt]!.id}: ERROR ${run.why}`);
      from = failedAt + 1;
    }
  }
  const text = [...sassReport(), '', ...summary(results)];
  console.log(`\n${text.join('\n')}`);
  const out = arg('--out');
  if (out) {
    makeDirs(out);
    writeFileSync(join(out, 'results.json'), JSON.stringify({ results, report: text }, null, 2));
  }
  process.exit(results.every((r) => r.verdict === 'PASS') ? 0 : 1);
}

if (argv.includes('--child')) {
  await child(arg('--child')!, Number(arg('--from') ?? 0));
} else {
  await parent();
}
