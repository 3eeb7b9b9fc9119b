/** elementwise.cu: embedding, RMSNorm, SwiGLU, add, column copies, fills and dtype conversion. */
import { FLOAT_TYPES, kernelFile } from '../kernel-table.ts';

export const ELEMENTWISE = kernelFile('elementwise.cu', {
  embedding_fwd: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['ids', 'ptr'],
      ['table', 'ptr'],
      ['out', 'ptr'],
      ['tokens', 'i32'],
      ['dim', 'i32'],
      ['vocab', 'i32'],
      ['scale', 'f32'],
      ['bad', 'ptr'],
    ],
  },
  embedding_sort: {
    params: [
      ['ids', 'ptr'],
      ['tokens', 'i32'],
      ['order', 'ptr'],
    ],
  },
  embedding_bwd: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['ids', 'ptr'],
      ['order', 'ptr'],
      ['dout', 'ptr'],
      ['dtable', 'ptr'],
      ['tokens', 'i32'],
      ['dim', 'i32'],
      ['vocab', 'i32'],
      ['scale', 'f32'],
    ],
  },
  rmsnorm_fwd: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['x', 'ptr'],
      ['w', 'ptr'],
      ['y', 'ptr'],
      ['rstd', 'ptr'],
      ['dim', 'i32'],
      ['eps', 'f32'],
    ],
  },
  rmsnorm_bwd: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['dy', 'ptr'],
      ['x', 'ptr'],
      ['w', 'ptr'],
      ['rstd', 'ptr'],
      ['dx', 'ptr'],
      ['dw_partial', 'ptr'],
      ['rows', 'i32'],
      ['dim', 'i32'],
      ['rows_per_block', 'i32'],
    ],
  },
  sum_partials: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['partial', 'ptr'],
      ['parts', 'i32'],
      ['n', 'i64'],
      ['out', 'ptr'],
      ['accumulate', 'i32'],
    ],
  },
  swiglu_fwd: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['g', 'ptr'],
      ['u', 'ptr'],
      ['a', 'ptr'],
      ['n', 'i64'],
    ],
  },
  swiglu_bwd: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['da', 'ptr'],
      ['g', 'ptr'],
      ['u', 'ptr'],
      ['dg', 'ptr'],
      ['du', 'ptr'],
      ['n', 'i64'],
    ],
  },
  add: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['a', 'ptr'],
      ['b', 'ptr'],
      ['out', 'ptr'],
      ['n', 'i64'],
    ],
  },
  copy_cols: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['src', 'ptr'],
      ['src_cols', 'i32'],
      ['src_off', 'i32'],
      ['dst', 'ptr'],
      ['dst_cols', 'i32'],
      ['dst_off', 'i32'],
      ['rows', 'i32'],
      ['width', 'i32'],
    ],
  },
  fill_normal: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['out', 'ptr'],
      ['n', 'i64'],
      ['std', 'f32'],
      ['seed', 'u32'],
      ['stream', 'u32'],
      ['offset', 'i64'],
      ['clamp', 'f32'],
    ],
  },
  convert: {
    template: ['S', 'D'],
    instances: ['float, bf16', 'bf16, float'],
    params: [
      ['src', 'ptr'],
      ['dst', 'ptr'],
      ['n', 'i64'],
    ],
  },
  fill_value: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['out', 'ptr'],
      ['n', 'i64'],
      ['value', 'f32'],
    ],
  },
} as const);
