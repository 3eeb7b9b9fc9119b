/**
 * Picks the backend for `device = "auto" | "cpu" | "cuda"`. The CUDA backend is not part of this build yet, so
 * "auto" resolves to the CPU and an explicit "cuda" is an error that says so.
 */
import type { Backend } from './backend.ts';
import { CpuBackend } from './cpu/backend.ts';
import { UserError } from '../util/errors.ts';

export function selectBackend(device: 'auto' | 'cpu' | 'cuda'): Backend {
  if (device === 'cuda') {
    throw new UserError('device = "cuda": this build of nmoe has no CUDA backend yet. Fix: set device = "cpu" or "auto".');
  }
  return new CpuBackend();
}
