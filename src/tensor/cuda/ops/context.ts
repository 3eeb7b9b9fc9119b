/**
 * What every CUDA op family takes from the backend: the device to launch on, device allocation, and the status
 * words kernels report into (read back with every read()).
 */
import type { DType, Tensor } from '../../tensor.ts';
import type { CudaDevice } from '../device.ts';

export interface CudaContext {
  readonly dev: CudaDevice;
  empty(shape: readonly number[], dtype: DType): Tensor;
  zeros(shape: readonly number[], dtype: DType): Tensor;
  upload(data: Float32Array | Int32Array, shape: readonly number[], dtype: DType): Tensor;
  /** i32 [1]: kernels that meet an out-of-range token or expert id set it (1 + the position). */
  readonly bad: Tensor;
  /** i32 [4]: the grouped GEMM pipeline watchdog's record {code, block, item, detail} (grouped_sm90.cu). */
  readonly watchdog: Tensor;
}

/** Blocks for a grid-stride kernel over `n` elements: one per `block` of them, at most 8192. */
export function gridFor(n: number, block = 256): number {
  return Math.max(1, Math.min(Math.ceil(n / block), 8192));
}
