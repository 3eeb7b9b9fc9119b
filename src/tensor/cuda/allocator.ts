/**
 * A caching device allocator: freed blocks go to a free list keyed by their rounded size and are reused by later
 * allocations, so a training loop's steady state never calls cuMemAlloc. All work runs on one stream, so a block
 * freed by the host may be handed out again at once: stream order keeps its old users ahead of its new ones.
 * Out of memory: release the cache and retry once; then a UserError with the sizes and the knobs to turn.
 */
import { UserError } from '../../util/errors.ts';
import { CudaError, check, cu } from './driver.ts';

const SMALL = 1 << 20;
const CUDA_ERROR_OUT_OF_MEMORY = 2;

/** Small blocks round to 512 B, large ones to 2 MiB: few distinct sizes, little waste. */
export function roundedSize(bytes: number): number {
  const unit = bytes <= SMALL ? 512 : 2 << 20;
  return Math.max(unit, Math.ceil(bytes / unit) * unit);
}

export interface MemoryStats {
  /** Bytes held by live tensors (rounded sizes). */
  current: number;
  peak: number;
  /** Bytes obtained from the driver, live or cached. */
  reserved: number;
  /** cuMemAlloc calls so far (a steady-state training step makes none). */
  driverAllocs: number;
}

export class CachingAllocator {
  readonly #free = new Map<number, bigint[]>();
  readonly stats: MemoryStats = { current: 0, peak: 0, reserved: 0, driverAllocs: 0 };

  alloc(bytes: number): { ptr: bigint; size: number } {
    const size = roundedSize(bytes);
    const cached = this.#free.get(size)?.pop();
    const ptr = cached ?? this.#fresh(size, bytes);
    this.stats.current += size;
    this.stats.peak = Math.max(this.stats.peak, this.stats.current);
    return { ptr, size };
  }

  release(ptr: bigint, size: number): void {
    this.stats.current -= size;
    const list = this.#free.get(size);
    if (list) list.push(ptr);
    else this.#free.set(size, [ptr]);
  }

  /** Returns every cached block to the driver. */
  emptyCache(): void {
    for (const [size, ptrs] of this.#free) {
      for (const p of ptrs) {
        check('cuMemFree', cu.memFree(p));
        this.stats.reserved -= size;
      }
    }
    this.#free.clear();
  }

  #fresh(size: number, requested: number): bigint {
    const out = new BigUint64Array(1);
    let rc = cu.memAlloc(out, size);
    if (rc === CUDA_ERROR_OUT_OF_MEMORY) {
      this.emptyCache();
      rc = cu.memAlloc(out, size);
    }
    if (rc === CUDA_ERROR_OUT_OF_MEMORY) {
      const free = new BigUint64Array(1),
        total = new BigUint64Array(1);
      cu.memGetInfo(free, total);
      const gib = (b: number | bigint) => `${(Number(b) / 2 ** 30).toFixed(2)} GiB`;
      throw new UserError(
        `out of GPU memory: asked for ${gib(requested)} with ${gib(this.stats.current)} in tensors (${gib(this.stats.reserved)} reserved) and ` +
          `${gib(free[0]!)} free of ${gib(total[0]!)}. Fix: lower batch_size or seq_len, use optim_state_dtype = "bf16" and ` +
          'master_weights = "bf16" (or "bf16_sr"), train on more GPUs (experts and optimizer state are split over ranks), or on a GPU with more memory.',
      );
    }
    if (rc !== 0) throw new CudaError('cuMemAlloc', rc, `cuMemAlloc of ${size} bytes failed with code ${rc}`);
    this.stats.reserved += size;
    this.stats.driverAllocs++;
    return out[0]!;
  }
}
