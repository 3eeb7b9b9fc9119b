/**
 * adamw_multi's host tables (src/tensor/cuda/adam-table.ts) against their definition written with BigInt: the chunk
 * list's entries are tensor index << 40 | first element, including elements past 2^32; the tensor table's rows are
 * the five pointers, the element count and the group, 64 bytes each.
 */
import { describe, expect, it } from 'vitest';
import { ADAM_CHUNK, adamChunkWords, adamTensorWords } from '../src/tensor/cuda/adam-table.ts';

describe('AdamW tables', () => {
  it('the chunk list: one entry per 8192 elements, tensor index << 40 | first element', () => {
    const numels = [1, ADAM_CHUNK, ADAM_CHUNK + 1, 3 * ADAM_CHUNK - 5, 2 ** 32 + 3 * ADAM_CHUNK];
    const words = adamChunkWords(numels);
    const got = new BigUint64Array(words.buffer);
    const want: bigint[] = [];
    numels.forEach((n, index) => {
      for (let e = 0; e < n; e += ADAM_CHUNK) want.push((BigInt(index) << 40n) | BigInt(e));
    });
    expect(got.length).toBe(want.length);
    expect([...got]).toEqual(want);
    expect(got[got.length - 1]).toBe((4n << 40n) | BigInt(2 ** 32 + 2 * ADAM_CHUNK)); // past 2^32: bits 32..39 set
  });

  it('the tensor table: five pointers, the element count and the group per 64-byte row', () => {
    const rows = [
      { pointers: [0x7f0000001000n, 0n, 0x7f0000002000n, 0x7f0000003000n, 0x7f0000004000n], numel: 12345, group: 2 },
      { pointers: [1n, 2n, 3n, 4n, 5n], numel: 2 ** 33, group: 0 },
    ];
    const got = new BigUint64Array(adamTensorWords(rows).buffer);
    expect([...got]).toEqual([...rows[0]!.pointers, 12345n, 2n, 0n, ...rows[1]!.pointers, 2n ** 33n, 0n, 0n]);
    expect(() => adamTensorWords([{ pointers: [1n], numel: 1, group: 0 }])).toThrow(/5 expected/);
  });
});
