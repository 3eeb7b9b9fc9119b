/**
 * Device tensors: a pointer into a block owned by its `owner` — the caching allocator, or another pool of device
 * memory such as RDEP's shared buffer — which takes it back on free. Views have no owner and free nothing.
 */
import { DTYPE_BYTES, type DType, type Tensor, describe, shapeNumel } from '../tensor.ts';

/** Takes a tensor's block back when the tensor is freed. */
export interface BlockOwner {
  release(ptr: bigint, size: number): void;
}

export class CudaTensor implements Tensor {
  readonly device = 'cuda' as const;
  readonly numel: number;
  #ptr: bigint | null;

  constructor(
    readonly shape: readonly number[],
    readonly dtype: DType,
    ptr: bigint,
    readonly size: number,
    readonly owner: BlockOwner | null,
  ) {
    this.numel = shapeNumel(shape);
    this.#ptr = ptr;
  }

  get ptr(): bigint {
    if (this.#ptr === null) throw new Error(`use of a freed tensor ${describe(this)}`);
    return this.#ptr;
  }

  get bytes(): number {
    return this.numel * DTYPE_BYTES[this.dtype];
  }

  free(): void {
    if (this.#ptr !== null && this.owner) this.owner.release(this.#ptr, this.size);
    this.#ptr = null;
  }
}

export function asCuda(t: Tensor): CudaTensor {
  if (!(t instanceof CudaTensor)) throw new Error(`CUDA backend got a ${t.device} tensor ${describe(t)}`);
  return t;
}

/** The C++ type a kernel template takes for a float dtype. */
export function ctype(t: Tensor): 'float' | 'bf16' {
  if (t.dtype === 'i32') throw new Error(`expected a float tensor, got ${describe(t)}`);
  return t.dtype === 'bf16' ? 'bf16' : 'float';
}
