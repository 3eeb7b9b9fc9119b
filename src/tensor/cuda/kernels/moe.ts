/** moe.cu: the router, expert grouping, gather/combine and the fp32 grouped GEMMs. */
import { FLOAT_TYPES, kernelFile } from '../kernel-table.ts';

export const MOE = kernelFile('moe.cu', {
  router_topk: {
    params: [
      ['logits', 'ptr'],
      ['bias', 'ptr'],
      ['gates', 'ptr'],
      ['idx', 'ptr'],
      ['tokens', 'i32'],
      ['experts', 'i32'],
      ['top_k', 'i32'],
      ['route_scale', 'f32'],
    ],
  },
  router_topk_bwd: {
    params: [
      ['dgates', 'ptr'],
      ['logits', 'ptr'],
      ['idx', 'ptr'],
      ['dlogits', 'ptr'],
      ['tokens', 'i32'],
      ['experts', 'i32'],
      ['top_k', 'i32'],
      ['route_scale', 'f32'],
    ],
  },
  moe_count: {
    params: [
      ['idx', 'ptr'],
      ['slots', 'i64'],
      ['experts', 'i32'],
      ['counts', 'ptr'],
      ['bad', 'ptr'],
    ],
  },
  moe_offsets: {
    params: [
      ['counts', 'ptr'],
      ['experts', 'i32'],
      ['offsets', 'ptr'],
      ['tile_rows', 'i32'],
      ['tiles', 'ptr'],
      ['num_tiles', 'ptr'],
    ],
  },
  moe_place: {
    params: [
      ['idx', 'ptr'],
      ['slots', 'i64'],
      ['offsets', 'ptr'],
      ['slot_of_row', 'ptr'],
      ['row_of_slot', 'ptr'],
    ],
  },
  moe_gather: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['x', 'ptr'],
      ['slot_of_row', 'ptr'],
      ['xe', 'ptr'],
      ['rows', 'i64'],
      ['dim', 'i32'],
      ['top_k', 'i32'],
    ],
  },
  moe_gather_bwd: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['dxe', 'ptr'],
      ['row_of_slot', 'ptr'],
      ['dx', 'ptr'],
      ['dim', 'i32'],
      ['top_k', 'i32'],
    ],
  },
  moe_combine: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['ye', 'ptr'],
      ['gates', 'ptr'],
      ['row_of_slot', 'ptr'],
      ['out', 'ptr'],
      ['dim', 'i32'],
      ['top_k', 'i32'],
    ],
  },
  moe_combine_bwd: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['dout', 'ptr'],
      ['ye', 'ptr'],
      ['gates', 'ptr'],
      ['row_of_slot', 'ptr'],
      ['dye', 'ptr'],
      ['dgates', 'ptr'],
      ['dim', 'i32'],
      ['top_k', 'i32'],
    ],
  },
  grouped_gemm: {
    template: ['T'],
    instances: FLOAT_TYPES,
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
  grouped_wgrad: {
    template: ['T'],
    instances: FLOAT_TYPES,
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
  router_bias_update: {
    params: [
      ['bias', 'ptr'],
      ['counts', 'ptr'],
      ['experts', 'i32'],
      ['rate', 'f32'],
      ['grad_norm', 'ptr'],
    ],
  },
} as const);
