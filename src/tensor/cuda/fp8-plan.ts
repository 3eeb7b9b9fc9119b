/**
 * The fp8 expert kernels' host arithmetic that needs no driver (ops/fp8.ts launches with it; test/fp8.test.ts
 * checks it on the CPU): the forward GEMM's shared-memory plan, the column quantiser's grid bound, and how a
 * download of packed codes unpacks.
 */
import { FP8_BLOCK } from '../fp8.ts';
import { KERNEL_CONSTANTS } from './kernel-constants.ts';

const up = (n: number) => Math.ceil(n / FP8_BLOCK);

/** Dynamic shared memory of grouped_fp8_gemm_sm90 (Fp8FwdPlan): 1 KB of slack, stages of a 128 x 128 byte A and B
 *  tile, 32 KB of epilogue staging, the mbarriers. */
export function fp8FwdSmem(): number {
  const stage = 2 * 128 * FP8_BLOCK,
    c = 32768,
    n = Math.min(8, Math.floor((KERNEL_CONSTANTS.SM90_SMEM_LIMIT - 1024 - c - 256) / stage));
  return 1024 + n * stage + c + 16 * n;
}
// grouped_fp8_sm90.cu static_asserts the same number.
if (fp8FwdSmem() !== 230496) throw new Error('fp8-plan.ts: the shared-memory plan disagrees with grouped_fp8_sm90.cu');

/** The most 128-row chunks that `experts` segments of `rows` rows in all can make: a short chunk per expert at most
 *  beyond the rows' own ceil(rows / 128). fp8_quant_columns's grid has this many chunk slots. */
export function maxSegmentChunks(rows: number, experts: number): number {
  return up(rows) + experts;
}

/** The first `n` codes of a downloaded code tensor (i32 words, four E4M3 bytes each in memory order). */
export function fp8Codes(words: Int32Array, n: number): Uint8Array {
  if (n > words.byteLength) throw new Error(`fp8Codes: ${n} codes asked of ${words.byteLength} bytes`);
  return new Uint8Array(words.buffer, words.byteOffset, n).slice();
}
