/** loss.cu: cross-entropy rows, count and finish. */
import { FLOAT_TYPES, kernelFile } from '../kernel-table.ts';

export const LOSS = kernelFile('loss.cu', {
  ce_fwd_rows: {
    params: [
      ['logits', 'ptr'],
      ['targets', 'ptr'],
      ['lse', 'ptr'],
      ['row_loss', 'ptr'],
      ['vocab', 'i32'],
      ['ignore', 'i32'],
      ['bad', 'ptr'],
    ],
  },
  ce_count: {
    params: [
      ['targets', 'ptr'],
      ['tokens', 'i64'],
      ['ignore', 'i32'],
      ['count', 'ptr'],
    ],
  },
  ce_finish: {
    params: [
      ['row_loss', 'ptr'],
      ['tokens', 'i64'],
      ['count', 'ptr'],
      ['loss', 'ptr'],
    ],
  },
  ce_bwd_rows: {
    template: ['T'],
    instances: FLOAT_TYPES,
    params: [
      ['logits', 'ptr'],
      ['targets', 'ptr'],
      ['lse', 'ptr'],
      ['count', 'ptr'],
      ['dlogits', 'ptr'],
      ['vocab', 'i32'],
      ['ignore', 'i32'],
      ['scale', 'f32'],
    ],
  },
} as const);
