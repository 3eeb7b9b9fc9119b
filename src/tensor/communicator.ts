/**
 * Collectives for data parallelism (dense gradients, ZeRO-2, router loads), one implementation per device: the
 * CPU mesh (src/comm/cpu/collectives.ts, the test oracle) and NCCL on the GPU (src/comm/cuda/nccl.ts). The
 * interface lives beside the Backend, below the optimizer and the training loop that call it, so neither depends on
 * the transports. Like the backend's ops they are enqueued in program order and
 * every rank must issue the same collectives in the same order. Reductions are sums taken in rank order, so every
 * rank ends with bit-identical values and a rerun with the same inputs reproduces them.
 */
import type { Backend } from './backend.ts';
import type { Tensor } from './tensor.ts';

export interface Communicator {
  readonly rank: number;
  readonly world: number;
  /** t = sum of t over ranks, in place. */
  allReduce(t: Tensor): void;
  /** dst [n] = sum over ranks of their src [world * n]'s block `rank`. */
  reduceScatter(src: Tensor, dst: Tensor): void;
  /** dst [world * n] = every rank's src [n], in rank order. */
  allGather(src: Tensor, dst: Tensor): void;
  /** t = root's t. */
  broadcast(t: Tensor, root: number): void;
  close(): Promise<void>;
}

/** Every rank's host `values` (the same count on each), in rank order: for the few numbers a benchmark compares. */
export async function allGatherHost(b: Backend, comm: Communicator, values: Float32Array): Promise<Float32Array> {
  const mine = b.upload(values, [values.length], 'f32'),
    all = b.empty([comm.world * values.length], 'f32');
  comm.allGather(mine, all);
  const out = (await b.read(all)) as Float32Array;
  mine.free();
  all.free();
  return out;
}
