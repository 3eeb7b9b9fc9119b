/** grouped.cu: the mma.sync grouped expert GEMMs (bf16). */
import { kernelFile } from '../kernel-table.ts';

export const GROUPED = kernelFile('grouped.cu', {
  grouped_gemm_tc: {
    params: [
      ['x', 'ptr'],
      ['w', 'ptr'],
      ['y', 'ptr'],
      ['offsets', 'ptr'],
      ['tiles', 'ptr'],
      ['num_tiles', 'ptr'],
      ['din', 'i32'],
      ['dout', 'i32'],
      ['trans_b', 'i32'],
    ],
  },
  grouped_wgrad_tc: {
    params: [
      ['x', 'ptr'],
      ['dy', 'ptr'],
      ['offsets', 'ptr'],
      ['dw', 'ptr'],
      ['din', 'i32'],
      ['dout', 'i32'],
      ['accumulate', 'i32'],
    ],
  },
} as const);
