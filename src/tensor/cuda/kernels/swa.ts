/**
 * swa.cu: sliding-window attention with sinks. The one-warp-per-row kernels are built for both float types with the
 * file; the band instances of flash.cuh's tensor-core kernels (bf16, head dims (D, D)) on demand.
 */
import { FLOAT_TYPES, kernelFile } from '../kernel-table.ts';

/** Head dims D the band flash kernels run at (the reference's v_head_dim); other head dims take the warp kernels. */
export const SWA_FLASH_HEAD_DIMS: readonly number[] = [128];
const reachable = SWA_FLASH_HEAD_DIMS.map(String);

export const SWA = kernelFile('swa.cu', {
  swa_fwd: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['q', 'ptr'],
      ['k', 'ptr'],
      ['v', 'ptr'],
      ['sinks', 'ptr'],
      ['out', 'ptr'],
      ['lse', 'ptr'],
      ['s', 'SwaDims'],
    ],
  },
  swa_row_terms: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['dout', 'ptr'],
      ['out', 'ptr'],
      ['sinks', 'ptr'],
      ['lse', 'ptr'],
      ['delta', 'ptr'],
      ['sink_terms', 'ptr'],
      ['rows_heads', 'i64'],
      ['heads', 'i32'],
      ['d', 'i32'],
    ],
  },
  swa_bwd_dq: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['dout', 'ptr'],
      ['q', 'ptr'],
      ['k', 'ptr'],
      ['v', 'ptr'],
      ['lse', 'ptr'],
      ['delta', 'ptr'],
      ['dq', 'ptr'],
      ['s', 'SwaDims'],
    ],
  },
  swa_bwd_dkdv: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['dout', 'ptr'],
      ['q', 'ptr'],
      ['k', 'ptr'],
      ['v', 'ptr'],
      ['lse', 'ptr'],
      ['delta', 'ptr'],
      ['dk', 'ptr'],
      ['dv', 'ptr'],
      ['s', 'SwaDims'],
    ],
  },
  swa_sink_grad: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['sink_terms', 'ptr'],
      ['dsinks', 'ptr'],
      ['rows', 'i32'],
      ['heads', 'i32'],
    ],
  },
  swa_flash_fwd: {
    template: ['D'],
    reachable,
    params: [
      ['q', 'ptr'],
      ['k', 'ptr'],
      ['v', 'ptr'],
      ['sinks', 'ptr'],
      ['out', 'ptr'],
      ['lse', 'ptr'],
      ['s', 'SwaDims'],
    ],
  },
  swa_flash_bwd_dq: {
    template: ['D'],
    reachable,
    params: [
      ['dout', 'ptr'],
      ['q', 'ptr'],
      ['k', 'ptr'],
      ['v', 'ptr'],
      ['lse', 'ptr'],
      ['delta', 'ptr'],
      ['dq', 'ptr'],
      ['s', 'SwaDims'],
    ],
  },
  swa_flash_bwd_dkdv: {
    template: ['D'],
    reachable,
    params: [
      ['dout', 'ptr'],
      ['q', 'ptr'],
      ['k', 'ptr'],
      ['v', 'ptr'],
      ['lse', 'ptr'],
      ['delta', 'ptr'],
      ['dk', 'ptr'],
      ['dv', 'ptr'],
      ['s', 'SwaDims'],
    ],
  },
} as const);
