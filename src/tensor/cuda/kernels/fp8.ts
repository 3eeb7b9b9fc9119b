/** fp8.cu: the block-scaled E4M3 quantisers, producing src/tensor/fp8.ts's codes and scales for each tiling. */
import { FLOAT_TYPES, kernelFile } from '../kernel-table.ts';

export const FP8 = kernelFile('fp8.cu', {
  fp8_quant_rows: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['x', 'ptr'],
      ['codes', 'ptr'],
      ['scales', 'ptr'],
      ['rows', 'i32'],
      ['cols', 'i32'],
    ],
  },
  fp8_quant_blocks: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['w', 'ptr'],
      ['codes', 'ptr'],
      ['codes_t', 'ptr'],
      ['scales', 'ptr'],
      ['rows', 'i32'],
      ['cols', 'i32'],
    ],
  },
  fp8_quant_columns: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['x', 'ptr'],
      ['offsets', 'ptr'],
      ['codes', 'ptr'],
      ['scales', 'ptr'],
      ['experts', 'i32'],
      ['cols', 'i32'],
    ],
  },
} as const);
