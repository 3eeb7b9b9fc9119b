/** Dense products through cuBLASLt (cublaslt.ts). */
import type { MatmulOptions } from '../../backend.ts';
import { type DType, type Tensor, describe } from '../../tensor.ts';
import { asCuda } from '../tensor.ts';
import type { CudaContext } from './context.ts';
import { convert } from './nn.ts';

export function matmul(c: CudaContext, a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const [ar, ac] = a.shape as [number, number];
  const [br, bc] = b.shape as [number, number];
  const [m, k] = opts.transA ? [ac, ar] : [ar, ac];
  const [k2, n] = opts.transB ? [bc, br] : [br, bc];
  if (a.shape.length !== 2 || b.shape.length !== 2 || k !== k2)
    throw new Error(`matmul: ${describe(a)} @ ${describe(b)} do not compose`);
  // cuBLASLt wants both operands in one type: a mixed pair runs in bf16.
  const abType: DType = a.dtype === 'bf16' || b.dtype === 'bf16' ? 'bf16' : 'f32';
  const A = asType(c, a, abType),
    B = asType(c, b, abType);
  const out = opts.out ?? c.empty([m, n], opts.outDtype ?? a.dtype);
  if (out.numel !== m * n) throw new Error(`matmul: output ${describe(out)} is not [${m},${n}]`);
  c.dev.gemm.run({
    m,
    n,
    k,
    a: asCuda(A).ptr,
    b: asCuda(B).ptr,
    c: asCuda(out).ptr,
    transA: !!opts.transA,
    transB: !!opts.transB,
    abType,
    cType: out.dtype,
    alpha: opts.alpha ?? 1,
    beta: opts.accumulate ? 1 : 0,
  });
  if (A !== a) A.free();
  if (B !== b) B.free();
  return out;
}

/** `t` in dtype `to`: `t` itself, or a converted copy (router gradients in fp32 meet bf16 weights). */
function asType(c: CudaContext, t: Tensor, to: DType): Tensor {
  if (t.dtype === to) return t;
  const out = c.empty(t.shape, to);
  convert(c, t, out);
  return out;
}
