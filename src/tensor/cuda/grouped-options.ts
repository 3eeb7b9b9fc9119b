/**
 * How the grouped expert GEMMs run on a CUDA backend, read once from the environment when it starts (ops/grouped.ts
 * applies them; tools/gemm-check.ts changes them per call).
 *
 * The Hopper kernels (wgmma fed by TMA, kernels/grouped_sm90.cu, with the fused SwiGLU forward and the summed input
 * gradient) apply on an sm_90a device to bf16 operands with dims in multiples of 8 and 16-byte aligned tensors;
 * elsewhere the mma.sync ones (grouped.cu) run. `path` (NMOE_GROUPED_GEMM) 'auto', the default, takes the Hopper
 * kernels for products of at least WGMMA_MIN_MACS multiply-adds, where they measured twice as fast (moonlet6's
 * expert GEMMs: 1.4e11), and the mma.sync ones below, where the persistent pipeline's start costs more than it saves
 * (1000 rows x 256 x 192: 0.076 ms against 0.026, H100, tools/gemm-check.ts); 'wgmma' takes them for every size,
 * 'mma' never. `wgrad` (NMOE_WGRAD) picks the Hopper weight-gradient kernel: 'cooperative', the default (both math
 * warpgroups on one tile, grouped_sm90.cu), or 'pingpong' (each on its own tile, their epilogues overlapping the
 * other's products: grouped_wgrad_pingpong_sm90.cu; compile-checked only, no GPU run of it exists). The rest are for
 * tools/gemm-check.ts: the forward tile width, the cooperative weight-gradient tile, kernel flags.
 */
import { UserError } from '../../util/errors.ts';
import type { FwdTileN, WgradTile } from './grouped-sm90.ts';

export type WgradSchedule = 'cooperative' | 'pingpong';

export interface GroupedGemmOptions {
  path: 'auto' | 'wgmma' | 'mma';
  wgrad: WgradSchedule;
  fwdTileN: FwdTileN;
  wgradTile: 'auto' | WgradTile;
  flags: number;
}

/** Under path 'auto', the Hopper kernels run for products of at least this many multiply-adds. */
export const WGMMA_MIN_MACS = 2 ** 32;

/** `env`'s value of `name` if it is one of `values` (unset or empty: the first), else a UserError naming the fix. */
function choice<const V extends readonly string[]>(
  env: Readonly<Record<string, string | undefined>>,
  name: string,
  values: V,
  what: string,
  meanings: string,
): V[number] {
  const v = env[name];
  if (v === undefined || v === '') return values[0]!;
  if ((values as readonly string[]).includes(v)) return v;
  throw new UserError(`${name}=${JSON.stringify(v)} is not ${what}. Fix: ${meanings}.`);
}

export function groupedGemmOptionsFromEnv(
  env: Readonly<Record<string, string | undefined>> = process.env,
): GroupedGemmOptions {
  return {
    path: choice(
      env,
      'NMOE_GROUPED_GEMM',
      ['auto', 'wgmma', 'mma'],
      'a grouped GEMM path',
      'NMOE_GROUPED_GEMM=auto (the default: the Hopper kernels for large products), wgmma (the Hopper kernels for every size) or mma (the mma.sync kernels)',
    ),
    wgrad: choice(
      env,
      'NMOE_WGRAD',
      ['cooperative', 'pingpong'],
      'a Hopper weight-gradient kernel',
      'NMOE_WGRAD=cooperative (the default: both math warpgroups on one tile) or pingpong (one tile each, epilogues overlapped)',
    ),
    fwdTileN: 256,
    wgradTile: 'auto',
    flags: 0,
  };
}
