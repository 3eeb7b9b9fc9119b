/** grouped_fp8_sm90.cu: the Hopper fp8 grouped expert GEMM (E4M3 operands, block scales, bf16 out). */
import { kernelFile } from '../kernel-table.ts';

export const GROUPED_FP8_SM90 = kernelFile('grouped_fp8_sm90.cu', {
  grouped_fp8_gemm_sm90: {
    template: ['TRANS_B'],
    // The forward (x @ W, B the transposed codes) and the input gradient (x @ W^T, B the codes as stored).
    reachable: ['0', '1'],
    params: [
      ['map_x', 'TmaMap'],
      ['map_w', 'TmaMap'],
      ['sa', 'ptr'],
      ['sb', 'ptr'],
      ['y', 'ptr'],
      ['offsets', 'ptr'],
      ['tiles', 'ptr'],
      ['num_tiles', 'ptr'],
      ['din', 'i32'],
      ['dout', 'i32'],
      ['wd', 'ptr'],
    ],
  },
} as const);
