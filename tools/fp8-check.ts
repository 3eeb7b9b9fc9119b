/**
 * GPU check of the fp8 expert kernels (src/tensor/cuda/kernels/fp8.cu, grouped_fp8_sm90.cu) against the CPU
 * emulation (src/tensor/fp8.ts, which src/tensor/cpu/moe.ts's dtype = "fp8" path uses), on random bf16 data
 * downloaded from the GPU; then times the fp8 forward GEMM beside the bf16 one on the same operands. One command on
 * the GPU machine:
 *
 *   node --import tsx tools/fp8-check.ts [--cases small,moonlet6] [--iters 20]
 *
 * Cases: `small` (1000 rows, d 256, f 192, 8 experts, two empty, segments of 1 and 7 rows) and `moonlet6` (49152
 * rows = 8192 tokens x top-6 spread over 64 experts, d 2048, f 1408: the up projection x @ W1).
 * - quantisers: x's row tiles, W1's blocks (and their transposed copy), x's column tiles within the segments must
 *   equal quantizeFp8's codes and scales exactly (a count of mismatches, and the first few);
 * - GEMMs: the forward y = x @ W1 and the input gradient's dy @ W1^T in fp8, against the fp64 product of the
 *   emulated operands (fakeQuantizeFp8's values) on rows at segment and tile edges (every row for `small`),
 *   ||gpu - cpu|| / ||cpu|| < 5e-3;
 * - timing: the median of --iters runs after 3 warm-ups (device events) of the bf16 grouped GEMM, the fp8 GEMM
 *   alone, and the fp8 GEMM with x's quantisation, TFLOPS as 2 rows d f / time.
 * Exit code 1 when anything failed.
 */
import { CudaBackend } from '../src/tensor/cuda/backend.ts';
import { fp8Codes } from '../src/tensor/cuda/fp8-plan.ts';
import {
  fp8GroupedMatmul,
  quantizeExperts,
  quantizeRows,
  quantizeSegments,
  type Fp8Device,
} from '../src/tensor/cuda/ops/fp8.ts';
import { FP8_BLOCK, fakeQuantizeFp8, quantizeFp8, type Fp8Tiling } from '../src/tensor/fp8.ts';
import type { Tensor } from '../src/tensor/tensor.ts';

const TOL = 5e-3;
const argv = process.argv.slice(2);
const arg = (flag: string): string | undefined => (argv.includes(flag) ? argv[argv.indexOf(flag) + 1] : undefined);
const ITERS = Number(arg('--iters') ?? 20);

interface Case {
  name: string;
  d: number;
  f: number;
  counts: number[];
}

const CASES: Record<string, () => Case> = {
  small: () => ({ name: 'small', d: 256, f: 192, counts: [0, 130, 1, 257, 0, 400, 7, 205] }),
  // 49152 rows over 64 experts, uneven (a deterministic spread of 384 to 1140 rows) like a real routing.
  moonlet6: () => {
    const counts = Array.from({ length: 64 }, (_, e) => 384 + ((e * 37) % 64) * 12);
    counts[63]! += 49152 - counts.reduce((s, v) => s + v, 0);
    return { name: 'moonlet6', d: 2048, f: 1408, counts };
  },
};

const b = new CudaBackend(0);
let failed = false;

function report(what: string, ok: boolean, detail: string): void {
  console.log(`${ok ? 'PASS' : 'FAIL'}  ${what}: ${detail}`);
  if (!ok) failed = true;
}

async function f32(t: Tensor): Promise<Float32Array> {
  return (await b.read(t)) as Float32Array;
}

/** Compares the GPU's codes and scales with fp8.ts's for the same values; returns the GPU's codes. */
async function compareQuantised(what: string, got: Fp8Device, want: { codes: Uint8Array; scales: Float32Array }) {
  const codes = fp8Codes((await b.read(got.codes)) as Int32Array, want.codes.length);
  const scales = (await f32(got.scales)).subarray(0, want.scales.length);
  const bad: string[] = [];
  let codeMismatches = 0,
    scaleMismatches = 0;
  for (let i = 0; i < want.codes.length; i++)
    if (codes[i] !== want.codes[i] && codeMismatches++ < 3) bad.push(`code ${i}: ${codes[i]} vs ${want.codes[i]}`);
  for (let i = 0; i < want.scales.length; i++)
    if (!Object.is(scales[i], want.scales[i]) && scaleMismatches++ < 3)
      bad.push(`scale ${i}: ${scales[i]} vs ${want.scales[i]}`);
  report(
    what,
    codeMismatches + scaleMismatches === 0,
    `${codeMismatches} of ${want.codes.length} codes and ${scaleMismatches} of ${want.scales.length} scales differ ${bad.join('; ')}`,
  );
  return codes;
}

async function timeMs(fn: () => void): Promise<number> {
  for (let i = 0; i < 3; i++) fn();
  await b.synchronize();
  const ends: (() => number)[] = [];
  for (let i = 0; i < ITERS; i++) {
    const stop = b.dev.startTiming();
    fn();
    ends.push(stop());
  }
  const ms = ends.map((end) => end()).sort((p, q) => p - q);
  return ms[Math.floor(ms.length / 2)]!;
}

/** Rows the GEMM is checked on: each segment's first and last rows and those around 128-row tile edges. */
function checkedRows(offsets: number[], rows: number): number[] {
  if (rows <= 1024) return Array.from({ length: rows }, (_, r) => r);
  const set = new Set<number>();
  for (let e = 0; e + 1 < offsets.length; e++)
    for (let r = offsets[e]!; r < offsets[e + 1]!; r += FP8_BLOCK)
      for (const q of [r, r + 63, r + 64, r + 127]) if (q < offsets[e + 1]!) set.add(q);
  for (let e = 1; e < offsets.length; e++) if (offsets[e]! > 0) set.add(offsets[e]! - 1);
  return [...set].sort((p, q) => p - q);
}

async function runCase(c: Case): Promise<void> {
  const experts = c.counts.length,
    rows = c.counts.reduce((s, v) => s + v, 0);
  const offsets = [0];
  for (const n of c.counts) offsets.push(offsets.at(-1)! + n);
  console.log(`[${c.name}] ${rows} rows over ${experts} experts, d ${c.d}, f ${c.f}`);
  const seg = b.moeSegments(b.upload(Int32Array.from(c.counts), [experts], 'i32'), rows);
  const x = b.empty([rows, c.d], 'bf16'),
    w = b.empty([experts, c.d, c.f], 'bf16');
  b.fillNormal(x, { std: 1, seed: 2024, stream: 1 });
  b.fillNormal(w, { std: 0.05, seed: 2024, stream: 5 });
  const xs = await f32(x),
    ws = await f32(w);

  // --- quantisers -------------------------------------------------------------------------------------------
  const qx = quantizeRows(b, x);
  await compareQuantised(`[${c.name}] row tiles of x`, qx, quantizeFp8(xs, rows, c.d, { kind: 'rows' }));
  const qw = quantizeExperts(b, w);
  const plane = c.d * c.f;
  const wantW = {
    codes: new Uint8Array(ws.length),
    scales: new Float32Array(experts * Math.ceil(c.d / 128) * Math.ceil(c.f / 128)),
  };
  for (let e = 0, s = 0; e < experts; e++) {
    const one = quantizeFp8(ws.subarray(e * plane, (e + 1) * plane), c.d, c.f, { kind: 'blocks' });
    wantW.codes.set(one.codes, e * plane);
    wantW.scales.set(one.scales, s);
    s += one.scales.length;
  }
  const wCodes = await compareQuantised(`[${c.name}] blocks of W1`, qw, wantW);
  const tCodes = fp8Codes((await b.read(qw.transposed)) as Int32Array, ws.length);
  let transposeMismatches = 0;
  for (let e = 0; e < experts; e++)
    for (let r = 0; r < c.d; r++)
      for (let k = 0; k < c.f; k++)
        if (tCodes[e * plane + k * c.d + r] !== wCodes[e * plane + r * c.f + k]) transposeMismatches++;
  report(`[${c.name}] transposed codes of W1`, transposeMismatches === 0, `${transposeMismatches} differ`);
  const segments: Fp8Tiling = { kind: 'columns', segments: Int32Array.from(offsets) };
  await compareQuantised(
    `[${c.name}] column tiles of x`,
    quantizeSegments(b, x, seg.offsets),
    quantizeFp8(xs, rows, c.d, segments),
  );

  // --- GEMMs ------------------------------------------------------------------------------------------------
  const plan = b.groupedTiles(seg.offsets);
  const wq = new Float32Array(ws.length);
  for (let e = 0; e < experts; e++)
    wq.set(fakeQuantizeFp8(ws.subarray(e * plane, (e + 1) * plane), c.d, c.f, { kind: 'blocks' }), e * plane);
  const rowsChecked = checkedRows(offsets, rows);
  // a [rows, din] (host values) @ W1 [E, d, f] in fp8, or @ W1^T with transB (din = f), against the emulation.
  const checkProduct = async (what: string, a: Tensor, as: Float32Array, transB: boolean) => {
    const [din, dout] = transB ? [c.f, c.d] : [c.d, c.f];
    const y = b.empty([rows, dout], 'bf16');
    const qa = quantizeRows(b, a);
    fp8GroupedMatmul(b, qa, qw, { rows, din, dout, experts }, seg.offsets, plan, y, transB);
    const ys = await f32(y);
    qa.codes.free();
    qa.scales.free();
    const aq = fakeQuantizeFp8(as, rows, din, { kind: 'rows' });
    let num = 0,
      den = 0;
    for (const r of rowsChecked) {
      let e = 0;
      while (offsets[e + 1]! <= r) e++;
      for (let n = 0; n < dout; n++) {
        let want = 0;
        for (let k = 0; k < din; k++) want += aq[r * din + k]! * wq[e * plane + (transB ? n * c.f + k : k * c.f + n)]!;
        num += (ys[r * dout + n]! - want) ** 2;
        den += want ** 2;
      }
    }
    const rel = Math.sqrt(num / den);
    report(
      `[${c.name}] ${what} vs the emulation`,
      rel < TOL,
      `relative error ${rel.toExponential(2)} on ${rowsChecked.length} rows`,
    );
    return y;
  };
  const y = await checkProduct('fp8 x @ W1 (forward)', x, xs, false);
  const dy = b.empty([rows, c.f], 'bf16');
  b.fillNormal(dy, { std: 1, seed: 2024, stream: 3 });
  await checkProduct('fp8 dy @ W1^T (input gradient)', dy, await f32(dy), true);
  const shape = { rows, din: c.d, dout: c.f, experts };

  // --- timing -----------------------------------------------------------------------------------------------
  const flops = 2 * rows * c.d * c.f;
  const tflops = (ms: number) => (flops / ms / 1e9).toFixed(0);
  const bf16Ms = await timeMs(() => b.groupedMatmulInto(x, w, seg.offsets, false, y));
  const fp8Ms = await timeMs(() => fp8GroupedMatmul(b, qx, qw, shape, seg.offsets, plan, y));
  const withQuantMs = await timeMs(() => {
    const q = quantizeRows(b, x);
    fp8GroupedMatmul(b, q, qw, shape, seg.offsets, plan, y);
    q.codes.free();
    q.scales.free();
  });
  console.log(
    `[${c.name}] bf16 ${bf16Ms.toFixed(3)} ms (${tflops(bf16Ms)} TFLOPS), fp8 ${fp8Ms.toFixed(3)} ms (${tflops(fp8Ms)} TFLOPS), fp8 with x's quantisation ${withQuantMs.toFixed(3)} ms`,
  );
  seg.free();
}

console.log(`${b.dev.info.name}, ${b.dev.info.arch}, ${b.dev.info.multiprocessors} SMs`);
for (const name of (arg('--cases') ?? 'small,moonlet6').split(',')) {
  const make = CASES[name];
  if (!make) {
    console.error(`fp8-check: unknown case ${name} (known: ${Object.keys(CASES).join(', ')})`);
    process.exit(2);
  }
  await runCase(make());
}
process.exit(failed ? 1 : 0);
