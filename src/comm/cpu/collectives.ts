/**
 * Collectives on CPU tensors over the CPU mesh. Every reduction adds the ranks' contributions in rank order
 * (0, 1, 2, …) starting from zero, so all ranks compute bit-identical sums; bf16 tensors are rounded once, after
 * the sum (they are stored in fp32 on the CPU).
 */
import type { Communicator } from '../../tensor/communicator.ts';
import { type CpuArray, asCpu, settle } from '../../tensor/cpu/storage.ts';
import type { Tensor } from '../../tensor/tensor.ts';
import type { CpuMesh } from './mesh.ts';

export const bytesOf = (a: CpuArray): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** `bytes` read as elements of the same array type as `like`. */
export function arrayLike(like: CpuArray, bytes: Uint8Array): CpuArray {
  const Ctor = like.constructor as new (b: ArrayBufferLike, offset: number, length: number) => CpuArray;
  return new Ctor(bytes.buffer, bytes.byteOffset, bytes.byteLength / like.BYTES_PER_ELEMENT);
}

export class CpuCollectives implements Communicator {
  constructor(private readonly mesh: CpuMesh) {}

  get rank(): number {
    return this.mesh.rank;
  }

  get world(): number {
    return this.mesh.world;
  }

  allReduce(t: Tensor): void {
    const c = asCpu(t);
    const recvs = this.mesh.exchange(Array(this.world).fill(bytesOf(c.data)));
    sumInto(
      c.data,
      recvs.map((r) => arrayLike(c.data, r)),
    );
    settle(c);
  }

  reduceScatter(src: Tensor, dst: Tensor): void {
    const s = asCpu(src),
      d = asCpu(dst);
    const n = d.numel;
    if (s.numel !== n * this.world)
      throw new Error(`reduceScatter: src of ${s.numel} elements for ${this.world} blocks of ${n}`);
    const recvs = this.mesh.exchange(
      Array.from({ length: this.world }, (_, j) => bytesOf(s.data.subarray(j * n, (j + 1) * n))),
    );
    sumInto(
      d.data,
      recvs.map((r) => arrayLike(d.data, r)),
    );
    settle(d);
  }

  allGather(src: Tensor, dst: Tensor): void {
    const s = asCpu(src),
      d = asCpu(dst);
    const n = s.numel;
    if (d.numel !== n * this.world)
      throw new Error(`allGather: dst of ${d.numel} elements for ${this.world} blocks of ${n}`);
    const recvs = this.mesh.exchange(Array(this.world).fill(bytesOf(s.data)));
    recvs.forEach((r, j) => d.data.set(arrayLike(d.data, r), j * n));
  }

  broadcast(t: Tensor, root: number): void {
    const c = asCpu(t);
    const empty = new Uint8Array(0);
    const recvs = this.mesh.exchange(Array(this.world).fill(this.rank === root ? bytesOf(c.data) : empty));
    c.data.set(arrayLike(c.data, recvs[root]!));
  }

  close(): Promise<void> {
    return this.mesh.close();
  }
}

/** out = parts[0] + parts[1] + … element-wise, added in that order from zero. */
function sumInto(out: CpuArray, parts: CpuArray[]): void {
  out.fill(0);
  for (const p of parts) for (let i = 0; i < out.length; i++) out[i]! += p[i]!;
}
