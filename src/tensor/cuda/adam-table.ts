/**
 * The two tables adamw_multi (kernels/optim.cu) reads, as host words: the tensor table (one AdamTensor per
 * parameter: five pointers, the element count, the group, padding; 64 bytes) and the chunk list (one 64-bit entry
 * per 8192 elements, tensor index << 40 | first element). Pure functions of pointers and sizes, so they are
 * tested on the CPU (test/adam-table.test.ts); the backend caches them (the chunk list by sizes alone).
 */
import { KERNEL_CONSTANTS } from './kernel-constants.ts';

export const ADAM_CHUNK = KERNEL_CONSTANTS.ADAM_CHUNK;

/** One parameter's row of the tensor table: value, fp32 master (or 0), gradient, first and second moments. */
export interface AdamTensorRow {
  pointers: readonly bigint[];
  numel: number;
  group: number;
}

export function adamTensorWords(rows: readonly AdamTensorRow[]): Int32Array {
  const words = new BigInt64Array(8 * rows.length);
  rows.forEach((r, i) => {
    if (r.pointers.length !== 5) throw new Error(`adam table: ${r.pointers.length} pointers for a tensor, 5 expected`);
    words.set([...r.pointers, BigInt(r.numel), BigInt(r.group), 0n], 8 * i);
  });
  return new Int32Array(words.buffer);
}

/** The chunk list of tensors of these sizes, as little-endian 32-bit word pairs (no BigInt: 460K entries at moonlet6). */
export function adamChunkWords(numels: readonly number[]): Int32Array {
  const chunks = numels.reduce((n, numel) => n + Math.ceil(numel / ADAM_CHUNK), 0);
  const words = new Int32Array(2 * chunks);
  let c = 0;
  numels.forEach((numel, index) => {
    for (let e = 0; e < numel; e += ADAM_CHUNK, c++) {
      words[2 * c] = (e % 2 ** 32) | 0; // low word: the first element's bits 0..31
      words[2 * c + 1] = index * 256 + Math.floor(e / 2 ** 32); // high word: index << 8 | the element's bits 32..39
    }
  });
  return words;
}
