/** rdep.cu: expert dispatch and return over CUDA IPC. */
import { kernelFile } from '../kernel-table.ts';

export const RDEP = kernelFile('rdep.cu', {
  rdep_route_send: {
    params: [
      ['counts', 'ptr'],
      ['offsets', 'ptr'],
      ['peers', 'Peers'],
      ['counts_off', 'i64'],
      ['starts_off', 'i64'],
      ['experts', 'i32'],
      ['local', 'i32'],
      ['me', 'i32'],
    ],
  },
  rdep_barrier: {
    params: [
      ['peers', 'Peers'],
      ['me', 'i32'],
      ['world', 'i32'],
      ['epoch', 'u32'],
      ['timeout_ns', 'i64'],
      ['err', 'ptr'],
    ],
  },
  rdep_place: {
    params: [
      ['counts', 'ptr'],
      ['offsets', 'ptr'],
      ['peers', 'Peers'],
      ['counts_off', 'i64'],
      ['starts_off', 'i64'],
      ['experts', 'i32'],
      ['local', 'i32'],
      ['world', 'i32'],
      ['me', 'i32'],
      ['dest', 'ptr'],
      ['dest_rank', 'ptr'],
      ['origin', 'ptr'],
      ['origin_rank', 'ptr'],
      ['seg_counts', 'ptr'],
    ],
  },
  rdep_dispatch: {
    params: [
      ['x', 'ptr'],
      ['dest', 'ptr'],
      ['dest_rank', 'ptr'],
      ['offsets', 'ptr'],
      ['first', 'i32'],
      ['peers', 'Peers'],
      ['recv_off', 'i64'],
      ['row_vecs', 'i32'],
      ['rows', 'i64'],
    ],
  },
  rdep_return: {
    params: [
      ['y', 'ptr'],
      ['origin', 'ptr'],
      ['origin_rank', 'ptr'],
      ['received', 'ptr'],
      ['peers', 'Peers'],
      ['ret_off', 'i64'],
      ['row_vecs', 'i32'],
    ],
  },
} as const);
