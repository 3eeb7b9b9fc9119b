/**
 * CPU tensors: f32 and bf16 live in Float32Array (bf16 values kept exactly representable), i32 in Int32Array.
 * Gradient checks of the whole model switch float storage to Float64Array (`setDoubleStorage`), so finite
 * differences resolve gradients far below fp32's rounding of the loss; the kernels are the same code either way.
 */
import { roundArrayToBf16 } from '../bf16.ts';
import { type DType, type Tensor, describe, shapeNumel } from '../tensor.ts';

export type FloatArray = Float32Array | Float64Array;
export type CpuArray = FloatArray | Int32Array;

let FloatStorage: Float32ArrayConstructor | Float64ArrayConstructor = Float32Array;

/** Test hook: store float tensors in doubles (true) or in fp32 (false, the default). */
export function setDoubleStorage(on: boolean): void {
  FloatStorage = on ? Float64Array : Float32Array;
}

/** Scratch or output storage for float values, in the current storage precision. */
export function newFloats(n: number): FloatArray {
  return new FloatStorage(n);
}

export class CpuTensor implements Tensor {
  readonly device = 'cpu' as const;
  readonly numel: number;
  #data: CpuArray | null;

  constructor(
    readonly shape: readonly number[],
    readonly dtype: DType,
    data: CpuArray,
    readonly isView = false,
  ) {
    this.numel = shapeNumel(shape);
    if (data.length !== this.numel) throw new Error(`storage of ${data.length} elements for ${describe(this)}`);
    this.#data = data;
  }

  get data(): CpuArray {
    if (this.#data === null) throw new Error(`use of a freed tensor ${describe(this)}`);
    return this.#data;
  }

  /** Float view of f32/bf16 storage. */
  get f(): FloatArray {
    const d = this.data;
    if (d instanceof Int32Array) throw new Error(`expected a float tensor, got ${describe(this)}`);
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
  return new CpuTensor(shape, dtype, dtype === 'i32' ? new Int32Array(n) : newFloats(n));
}

/** Applies the dtype's storage rounding after a kernel wrote float values. */
export function settle(t: CpuTensor): CpuTensor {
  const f = t.data;
  if (t.dtype === 'bf16' && f instanceof Float32Array) roundArrayToBf16(f);
  return t;
}

export function asCpu(t: Tensor): CpuTensor {
  if (!(t instanceof CpuTensor)) throw new Error(`CPU backend got a ${t.device} tensor ${describe(t)}`);
  return t;
}
