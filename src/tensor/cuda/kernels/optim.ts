/** optim.cu: the global norm, AdamW and Muon. */
import { FLOAT_TYPES, kernelFile } from '../kernel-table.ts';

export const OPTIM = kernelFile('optim.cu', {
  sumsq_partial: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['x', 'ptr'],
      ['n', 'i64'],
      ['partial', 'ptr'],
      ['vec', 'i32'],
    ],
  },
  norm_finish: {
    params: [
      ['partial', 'ptr'],
      ['n', 'i64'],
      ['norm', 'ptr'],
    ],
  },
  adamw_multi: {
    template: ['P', 'S', 'SR'],
    instances: [
      'float, float, false',
      'float, bf16, false',
      'bf16, float, false',
      'bf16, float, true',
      'bf16, bf16, false',
      'bf16, bf16, true',
    ],
    params: [
      ['tensors', 'ptr'],
      ['chunks', 'ptr'],
      ['groups', 'AdamGroups'],
      ['grad_norm', 'ptr'],
      ['max_norm', 'f32'],
      ['seed', 'u32'],
      ['step', 'u32'],
    ],
  },
  muon_momentum: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['g', 'ptr'],
      ['m', 'ptr'],
      ['u', 'ptr'],
      ['n', 'i64'],
      ['mu', 'f32'],
      ['nesterov', 'i32'],
      ['grad_norm', 'ptr'],
      ['max_norm', 'f32'],
    ],
  },
  scale_by_inverse_norm: {
    params: [
      ['x', 'ptr'],
      ['n', 'i64'],
      ['norm', 'ptr'],
      ['eps', 'f32'],
    ],
  },
  muon_update: {
    template: ['P', 'D'],
    instances: ['float, float', 'bf16, bf16'],
    params: [
      ['p', 'ptr'],
      ['master', 'ptr'],
      ['delta', 'ptr'],
      ['n', 'i64'],
      ['decay', 'f32'],
      ['alpha', 'f32'],
      ['grad_norm', 'ptr'],
      ['stochastic', 'i32'],
      ['seed', 'u32'],
      ['step', 'u32'],
    ],
  },
} as const);
