/** CPU tensors: f32 and bf16 live in Float32Array (bf16 values kept exactly representable), i32 in Int32Array. */
import { roundArrayToBf16 } from '../bf16.ts';
import { type DType, type Tensor, describe, shapeNumel } from '../tensor.ts';

export type CpuArray = Float32Array | Int32Array;

export class CpuTensor implements Tensor {
  readonly device = 'cpu' as const;
  readonly numel: number;
  #data: CpuArray | null;

  constructor(readonly shape: readonly number[], readonly dtype: DType, data: CpuArray, readonly isView = false) {
    this.numel = shapeNumel(shape);
    if (data.length !== this.numel) throw new Error(`storage of ${data.length} elements for ${describe(this)}`);
    this.#data = data;
  }

  get data(): CpuArray {
    if (this.#data === null) throw new Error(`use of a freed tensor ${describe(this)}`);
    return this.#data;
  }

  /** Float view of f32/bf16 storage. */
  get f(): Float32Array {
    const d = this.data;
    if (!(d instanceof Float32Array)) throw new Error(`expected a float tensor, got ${describe(this)}`);
    return d;
  }

  /** Integer view of i32 storage. */
  get i(): Int32Array {
    const d = this.data;
    if (!(d instanceof Int32Array)) throw new Error(`expected an i32 tensor, got ${describe(this)}`);
    return d;
  }

  free(): void {
    if (!this.isView) this.#data = null;
  }
}

export function allocate(shape: readonly number[], dtype: DType): CpuTensor {
  const n = shapeNumel(shape);
  return new CpuTensor(shape, dtype, dtype === 'i32' ? new Int32Array(n) : new Float32Array(n));
}

/** Applies the dtype's storage rounding after a kernel wrote float values. */
export function settle(t: CpuTensor): CpuTensor {
  if (t.dtype === 'bf16') roundArrayToBf16(t.f);
  return t;
}

export function asCpu(t: Tensor): CpuTensor {
  if (!(t instanceof CpuTensor)) throw new Error(`CPU backend got a ${t.device} tensor ${describe(t)}`);
  return t;
}
