/**
 * RDEP's shared-buffer areas (src/comm/rdep/areas.ts): which area a call gets must depend only on the sequence of
 * calls and frees (the same on every rank), and an area freed since the last barrier must be flagged, because a
 * peer's writes could otherwise land while this GPU still reads it.
 */
import { describe, expect, it } from 'vitest';
import { AreaPool } from '../src/comm/rdep/areas.ts';

describe('RDEP area pool', () => {
  it('hands out areas by the order of calls and frees, and views them at their offsets', () => {
    const pool = new AreaPool(1024, 4096, 3, 'receive');
    const epoch = 0;
    const a = pool.take(epoch),
      b = pool.take(epoch);
    expect([a, b]).toEqual([
      { index: 0, fresh: true },
      { index: 1, fresh: true },
    ]);
    const view = pool.view(1n << 20n, b.index, [8, 256], 'bf16', () => epoch);
    expect(view.ptr).toBe((1n << 20n) + 1024n + 4096n);
    expect(pool.offset(2)).toBe(1024 + 2 * 4096);
    view.free();
    expect(pool.take(epoch)).toEqual({ index: 2, fresh: true }); // the never-used area before the one just freed
  });

  it('flags an area freed since the last barrier, and prefers one freed before it', () => {
    const pool = new AreaPool(0, 64, 2, 'return');
    let epoch = 5;
    const views = [0, 1].map(() => pool.view(0n, pool.take(epoch).index, [1, 32], 'bf16', () => epoch));
    views[1]!.free(); // freed at barrier 5
    expect(pool.take(epoch)).toEqual({ index: 1, fresh: false }); // no barrier since: the caller must add one
    const again = pool.view(0n, 1, [1, 32], 'bf16', () => epoch);
    again.free();
    epoch = 6;
    views[0]!.free(); // freed at 6: area 1 (freed at 5) is the one a peer may write at once
    expect(pool.take(epoch)).toEqual({ index: 1, fresh: true });
    expect(pool.take(epoch)).toEqual({ index: 0, fresh: false });
  });

  it('says which pool ran out when every area is held', () => {
    const pool = new AreaPool(0, 64, 1, 'receive');
    pool.take(0);
    expect(() => pool.take(0)).toThrow(/all 1 receive areas are in use/);
  });
});
