/**
 * Picks the backend for `device = "auto" | "cpu" | "cuda"`. The CUDA backend is loaded only when asked for or
 * when a GPU answers, so CPU-only machines never touch the NVIDIA libraries. "auto" falls back to the CPU and
 * says why; an explicit "cuda" that cannot start is an error naming the cause.
 *
 * A fallback is not always what the user wants: on a machine that has a GPU, a CUDA backend that fails to start
 * (a library missing, a driver mismatch) is a fault to report, not a reason to run a model on the CPU for hours.
 * `gpuPresent` tells the two cases apart without nmoe's CUDA code: the NVIDIA device files or nvidia-smi, or
 * NMOE_EXPECT_GPU=1 where neither is visible (a container).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import type { Backend } from './backend.ts';
import { CpuBackend } from './cpu/backend.ts';
import { UserError } from '../util/errors.ts';

export interface Selected {
  backend: Backend;
  /** Why "auto" did not pick CUDA, when it did not. */
  note?: string;
  /** When "auto" fell back to the CPU: the CUDA backend's error, and whether this machine has a GPU all the same. */
  fallback?: { reason: string; gpuPresent: boolean };
}

async function openCuda(ordinal: number): Promise<Backend> {
  const { deviceCount } = await import('./cuda/device.ts');
  const count = deviceCount();
  if (count === 0) throw new UserError('the CUDA driver is installed but reports no GPU');
  const { CudaBackend } = await import('./cuda/backend.ts');
  return new CudaBackend(ordinal);
}

/** Whether this machine has an NVIDIA GPU, asked of the kernel driver's files and nvidia-smi, never of nmoe's CUDA code. */
export function gpuPresent(env: Record<string, string | undefined> = process.env): boolean {
  if (env.NMOE_EXPECT_GPU === '1') return true;
  if (existsSync('/dev/nvidia0')) return true;
  try {
    if (readdirSync('/proc/driver/nvidia/gpus').length > 0) return true;
  } catch {
    /* no NVIDIA kernel driver */
  }
  const smi = spawnSync('nvidia-smi', ['-L'], { encoding: 'utf8', timeout: 10_000 });
  return smi.status === 0 && /^GPU \d+/m.test(smi.stdout);
}

export async function selectBackend(
  device: 'auto' | 'cpu' | 'cuda',
  ordinal = Number(process.env.LOCAL_RANK ?? 0),
): Promise<Selected> {
  if (device === 'cpu') return { backend: new CpuBackend() };
  try {
    return { backend: await openCuda(ordinal) };
  } catch (err) {
    const reason = (err as Error).message;
    if (device === 'cuda')
      throw new UserError(
        `device = "cuda" but the CUDA backend cannot start: ${reason.replace(/\.$/, '')}; or set device = "cpu".`,
      );
    const present = gpuPresent();
    const short = reason.split('. Looked in')[0];
    const note = present
      ? `this machine has a GPU, but the CUDA backend failed to start (${short}), so this run uses the CPU. Run \`nmoe doctor\` to see why; set device = "cpu" to use the CPU on purpose`
      : `no GPU in use (${short})`;
    return { backend: new CpuBackend(), note, fallback: { reason, gpuPresent: present } };
  }
}
