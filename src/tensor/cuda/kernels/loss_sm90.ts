/** loss_sm90.cu: the one-pass Hopper cross-entropy rows. */
import { FLOAT_TYPES, kernelFile } from '../kernel-table.ts';

export const LOSS_SM90 = kernelFile('loss_sm90.cu', {
  ce_rows_sm90: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['logits', 'ptr'],
      ['targets', 'ptr'],
      ['count', 'ptr'],
      ['lse', 'ptr'],
      ['row_loss', 'ptr'],
      ['dlogits', 'ptr'],
      ['vocab', 'i32'],
      ['ignore', 'i32'],
      ['scale', 'f32'],
      ['bad', 'ptr'],
    ],
  },
} as const);
