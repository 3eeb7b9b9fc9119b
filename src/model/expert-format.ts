/**
 * The routed experts' number format, from the config's `dtype` (everything else computes in the activation dtype).
 * "fp8" is DeepSeek-V3's block-scaled E4M3 recipe: the CPU backend emulates it (src/tensor/fp8.ts); the CUDA
 * backend has no fp8 expert kernels and is refused rather than left to compute something else. "nvfp4" is the
 * reference's Blackwell format, which no backend here computes.
 */
import type { Dtype } from '../config/schema.ts';
import type { Backend, ExpertFormat } from '../tensor/backend.ts';
import { UserError } from '../util/errors.ts';

export function expertFormat(dtype: Dtype): ExpertFormat {
  return dtype === 'fp8' ? 'fp8' : 'stored';
}

/** Stops a model whose expert dtype this backend cannot compute, with the fix; checked once, when it is built. */
export function checkExpertDtype(dtype: Dtype, device: Backend['device']): void {
  if (dtype === 'nvfp4')
    throw new UserError(
      'dtype = "nvfp4" needs the FP4 tensor cores of Blackwell GPUs (sm_100), and nmoe computes on Hopper and the CPU, ' +
        'neither of which has an FP4 path. Fix: set dtype = "bf16" (or "fp8" on the CPU backend).',
    );
  if (dtype === 'fp8' && device === 'cuda')
    throw new UserError(
      'dtype = "fp8": the CUDA backend has no fp8 expert GEMMs (the CPU backend emulates them). ' +
        'Fix: set dtype = "bf16" on the GPU.',
    );
}
