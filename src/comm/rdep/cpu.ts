/**
 * RDEP on the CPU mesh: the oracle for the GPU's IPC path. Rows travel as one block per (source, owner) pair;
 * the receiving side places them by the two-phase count/offset rule of src/tensor/expert-exchange.ts.
 */
import { arrayLike, bytesOf } from '../cpu/collectives.ts';
import type { CpuMesh } from '../cpu/mesh.ts';
import { type CpuTensor, allocate, asCpu } from '../../tensor/cpu/storage.ts';
import type { MoePlan } from '../../tensor/backend.ts';
import type { Tensor } from '../../tensor/tensor.ts';
import type { ExpertExchange, ExpertRoute } from '../../tensor/expert-exchange.ts';

class CpuRoute implements ExpertRoute {
  constructor(
    readonly offsets: CpuTensor,
    readonly rows: number,
    /** sent[j]: rows this rank sends to rank j; its block starts at sendStart[j] of the grouped rows. */
    readonly sent: number[],
    readonly sendStart: number[],
    /** recv[s][e]: rows rank s sends to local expert e. */
    readonly recv: Int32Array[],
  ) {}

  free(): void {
    this.offsets.free();
  }
}

export class CpuExpertExchange implements ExpertExchange {
  constructor(
    private readonly mesh: CpuMesh,
    readonly numExperts: number,
  ) {}

  get rank(): number {
    return this.mesh.rank;
  }

  get world(): number {
    return this.mesh.world;
  }

  route(plan: MoePlan): CpuRoute {
    const c = asCpu(plan.counts).i;
    const local = this.numExperts / this.world;
    const sent: number[] = [],
      sendStart: number[] = [];
    const sends: Uint8Array[] = [];
    for (let j = 0, start = 0; j < this.world; j++) {
      const mine = c.subarray(j * local, (j + 1) * local);
      sendStart.push(start);
      sent.push(mine.reduce((a, b) => a + b, 0));
      start += sent[j]!;
      sends.push(bytesOf(mine));
    }
    const recv = this.mesh.exchange(sends).map((b) => arrayLike(c, b) as Int32Array);
    const offsets = allocate([local + 1], 'i32');
    for (let e = 0; e < local; e++) offsets.i[e + 1] = offsets.i[e]! + recv.reduce((a, r) => a + r[e]!, 0);
    return new CpuRoute(offsets, offsets.i[local]!, sent, sendStart, recv);
  }

  dispatch(rows: Tensor, route: ExpertRoute): Tensor {
    const r = route as CpuRoute,
      x = asCpu(rows);
    const dim = x.shape[1]!;
    const sends = r.sent.map((n, j) => bytesOf(x.data.subarray(r.sendStart[j]! * dim, (r.sendStart[j]! + n) * dim)));
    const blocks = this.mesh.exchange(sends).map((b) => arrayLike(x.data, b));
    const out = allocate([r.rows, dim], x.dtype);
    this.#walk(r, (s, srcRow, dstRow, n) =>
      out.data.set(blocks[s]!.subarray(srcRow * dim, (srcRow + n) * dim), dstRow * dim),
    );
    return out;
  }

  combine(rows: Tensor, route: ExpertRoute): Tensor {
    const r = route as CpuRoute,
      y = asCpu(rows);
    const dim = y.shape[1]!;
    const blocks = r.recv.map((cnt) => allocate([cnt.reduce((a, b) => a + b, 0), dim], y.dtype).data);
    this.#walk(r, (s, srcRow, dstRow, n) =>
      blocks[s]!.set(y.data.subarray(dstRow * dim, (dstRow + n) * dim), srcRow * dim),
    );
    const back = this.mesh.exchange(blocks.map(bytesOf)).map((b) => arrayLike(y.data, b));
    const out = allocate([r.sendStart[this.world - 1]! + r.sent[this.world - 1]!, dim], y.dtype);
    back.forEach((b, j) => out.data.set(b, r.sendStart[j]! * dim));
    return out;
  }

  /** Calls `move(source, row in the source's block, row in the dispatched layout, rows)` for every (expert, source) run. */
  #walk(r: CpuRoute, move: (source: number, srcRow: number, dstRow: number, n: number) => void): void {
    const local = r.offsets.numel - 1;
    const srcRow = new Array<number>(this.world).fill(0);
    for (let e = 0, dst = 0; e < local; e++) {
      for (let s = 0; s < this.world; s++) {
        const n = r.recv[s]![e]!;
        if (n) move(s, srcRow[s]!, dst, n);
        srcRow[s]! += n;
        dst += n;
      }
    }
  }
}
