/** RDEP's receive and return areas in the shared buffer of src/comm/rdep/cuda-ipc.ts, and when one may be reused. */
import { CudaTensor } from '../../tensor/cuda/tensor.ts';
import type { DType } from '../../tensor/tensor.ts';

/**
 * The receive (or return) areas of the shared buffer. Every rank makes the same exchange calls in the same order
 * and frees their tensors in the same order, so a call gets the same area on every rank and its rows land where the
 * peer looks. A peer may write into an area as soon as it is handed out again, so an area freed since the last
 * barrier (its readers may still be running on this GPU) costs one barrier before it is reused; areas freed
 * earlier are preferred.
 */
export class AreaPool {
  readonly #freedAt: (number | null)[];

  /** `count` areas of `bytes` each, from byte `start` of the shared buffer. */
  constructor(
    private readonly start: number,
    private readonly bytes: number,
    count: number,
    private readonly what: string,
  ) {
    this.#freedAt = Array.from({ length: count }, () => -1); // null: in use
  }

  /**
   * An area, preferring one freed before the last barrier, and whether it is such a one (`epoch`: barriers so far);
   * if it is not, a barrier must come before peers write into it.
   */
  take(epoch: number): { index: number; fresh: boolean } {
    let index = this.#freedAt.findIndex((f) => f !== null && f < epoch);
    const fresh = index >= 0;
    if (!fresh) index = this.#freedAt.findIndex((f) => f !== null);
    if (index < 0)
      throw new Error(
        `RDEP: all ${this.#freedAt.length} ${this.what} areas are in use (a dispatched or returned tensor was not freed?)`,
      );
    this.#freedAt[index] = null;
    return { index, fresh };
  }

  /** Where area `index` starts in the shared buffer. */
  offset(index: number): number {
    return this.start + index * this.bytes;
  }

  /** A tensor viewing area `index` of the buffer at `base`; freeing it gives the area back at barrier epoch `epoch()`. */
  view(base: bigint, index: number, shape: [number, number], dtype: DType, epoch: () => number): CudaTensor {
    return new CudaTensor(shape, dtype, base + BigInt(this.offset(index)), this.bytes, {
      release: () => {
        this.#freedAt[index] = epoch();
      },
    });
  }
}
