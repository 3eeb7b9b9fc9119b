/**
 * Picks the backend for `device = "auto" | "cpu" | "cuda"`. The CUDA backend is loaded only when asked for or
 * when a GPU answers, so CPU-only machines never touch the NVIDIA libraries. "auto" falls back to the CPU and
 * says why; an explicit "cuda" that cannot start is an error naming the cause.
 */
import type { Backend } from './backend.ts';
import { CpuBackend } from './cpu/backend.ts';
import { UserError } from '../util/errors.ts';

export interface Selected {
  backend: Backend;
  /** Why "auto" did not pick CUDA, when it did not. */
  note?: string;
}

async function openCuda(ordinal: number): Promise<Backend> {
  const { deviceCount } = await import('./cuda/device.ts');
  const count = deviceCount();
  if (count === 0) throw new UserError('the CUDA driver is installed but reports no GPU');
  const { CudaBackend } = await import('./cuda/backend.ts');
  return new CudaBackend(ordinal);
}

export async function selectBackend(device: 'auto' | 'cpu' | 'cuda', ordinal = Number(process.env.LOCAL_RANK ?? 0)): Promise<Selected> {
  if (device === 'cpu') return { backend: new CpuBackend() };
  try {
    return { backend: await openCuda(ordinal) };
  } catch (err) {
    const reason = (err as Error).message;
    if (device === 'cuda') throw new UserError(`device = "cuda" but the CUDA backend cannot start: ${reason.replace(/\.$/, '')}; or set device = "cpu".`);
    return { backend: new CpuBackend(), note: `no GPU in use (${reason.split('. Looked in')[0]})` };
  }
}
