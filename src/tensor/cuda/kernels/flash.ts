/** flash.cu: the tensor-core causal attention (flash.cuh's kernels without a band), instantiated on demand per padded
 *  (qk, v) head dims. swa.cu's table holds the band instances. */
import { kernelFile } from '../kernel-table.ts';

/** Padded (qk, v) head dims the tensor-core attention runs at: a shape takes the smallest that fits (other dims
 *  run on attention.cu's plain kernels), compiled when a shape first needs it. */
export const FLASH_HEAD_DIMS: readonly (readonly [number, number])[] = [
  [32, 16],
  [64, 64],
  [128, 128],
  [192, 128],
];
const reachable = FLASH_HEAD_DIMS.map(([qk, v]) => `${qk}, ${v}`);

export const FLASH = kernelFile('flash.cu', {
  flash_fwd: {
    template: ['DQK', 'DV'],
    reachable,
    params: [
      ['q', 'ptr'],
      ['k', 'ptr'],
      ['v', 'ptr'],
      ['out', 'ptr'],
      ['lse', 'ptr'],
      ['seq', 'i32'],
      ['heads', 'i32'],
      ['dqk', 'i32'],
      ['dv', 'i32'],
      ['scale', 'f32'],
    ],
  },
  flash_bwd_dq: {
    template: ['DQK', 'DV'],
    reachable,
    params: [
      ['dout', 'ptr'],
      ['q', 'ptr'],
      ['k', 'ptr'],
      ['v', 'ptr'],
      ['lse', 'ptr'],
      ['delta', 'ptr'],
      ['dq', 'ptr'],
      ['seq', 'i32'],
      ['heads', 'i32'],
      ['dqk', 'i32'],
      ['dv', 'i32'],
      ['scale', 'f32'],
    ],
  },
  flash_bwd_dkdv: {
    template: ['DQK', 'DV'],
    reachable,
    params: [
      ['dout', 'ptr'],
      ['q', 'ptr'],
      ['k', 'ptr'],
      ['v', 'ptr'],
      ['lse', 'ptr'],
      ['delta', 'ptr'],
      ['dk', 'ptr'],
      ['dv_out', 'ptr'],
      ['seq', 'i32'],
      ['heads', 'i32'],
      ['dqk', 'i32'],
      ['dv', 'i32'],
      ['scale', 'f32'],
    ],
  },
} as const);
