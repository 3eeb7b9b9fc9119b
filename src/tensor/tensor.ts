/**
 * The tensor handle shared by every backend: a shape, a dtype and a device, nothing else. Storage is owned by the
 * backend that made the tensor; `free()` hands it back at once (device memory is never left to the GC). Tensors are
 * row-major and contiguous; `Backend.view` reinterprets the shape without copying.
 */
export type DType = 'f32' | 'bf16' | 'i32';
export type DeviceKind = 'cpu' | 'cuda';

export interface Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: DeviceKind;
  /** Number of elements (product of shape). */
  readonly numel: number;
  free(): void;
}

export function shapeNumel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new Error(`invalid tensor shape [${shape.join(', ')}]`);
    n *= d;
  }
  return n;
}

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, bf16: 2, i32: 4 };

export function describe(t: Tensor): string {
  return `${t.dtype}[${t.shape.join(',')}]@${t.device}`;
}

/** Throws unless `t` has exactly `shape` (use -1 for "any"). `what` names the argument in the message. */
export function expectShape(t: Tensor, shape: readonly number[], what: string): void {
  const ok = t.shape.length === shape.length && shape.every((d, i) => d === -1 || d === t.shape[i]);
  if (!ok) throw new Error(`${what}: expected shape [${shape.join(',')}], got ${describe(t)}`);
}
