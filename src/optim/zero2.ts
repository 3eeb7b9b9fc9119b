/**
 * ZeRO-2 for the dense (replicated) weights, as the reference's nmoe/zero2.py: gradients are reduce-scattered so
 * that rank r holds the summed gradient of its slice [r*S, (r+1)*S) of the flat dense layout (src/model/params.ts),
 * AdamW updates only that slice (so each rank keeps optimizer state for 1/world of the dense weights), and the
 * updated slices are all-gathered back into every rank's weights.
 *
 * The reduce-scatter goes in chunks of at most NMOE_ZERO2_RS_CHUNK_MB (default 2048, as the reference): chunk k
 * packs [src*S + k*C, +C) of every source rank into one staging buffer, so the staging memory stays bounded
 * whatever the model size. With one rank nothing moves: the shard is the whole layout.
 *
 * Gradients are SUMMED (the reference averages): the loss each rank differentiates is already divided by the
 * global batch's counted targets, so the sum is the gradient of the global mean loss, as on one GPU.
 */
import type { Communicator } from '../tensor/communicator.ts';
import type { DenseLayout, Param } from '../model/params.ts';
import type { Backend } from '../tensor/backend.ts';
import { DTYPE_BYTES, type Tensor, shapeNumel } from '../tensor/tensor.ts';
import { positiveEnv } from '../util/errors.ts';

/** The part of one dense parameter that this rank's shard holds. */
export interface ShardPiece {
  param: Param;
  /** Element range [start, end) within the parameter. */
  start: number;
  end: number;
  /** Views: the weights (in the flat layout) and the summed gradient (in the shard). */
  value: Tensor;
  grad: Tensor;
}

function chunkElements(dtypeBytes: number, world: number, shardLength: number): number {
  const mb = positiveEnv('NMOE_ZERO2_RS_CHUNK_MB', 2048, 'MiB');
  const perRank = Math.floor((mb * 2 ** 20) / dtypeBytes / world / 256) * 256;
  return Math.min(shardLength, Math.max(256, perRank));
}

export class Zero2 {
  readonly pieces: ShardPiece[];
  /** The summed gradient of this rank's slice, [S] (with one rank: the flat gradient itself). */
  readonly gradShard: Tensor;
  readonly #staging: Tensor | null;
  readonly #chunk: number;

  constructor(
    private readonly b: Backend,
    private readonly layout: DenseLayout,
    private readonly comm: Communicator | null,
  ) {
    const world = comm?.world ?? 1,
      rank = comm?.rank ?? 0;
    if (layout.shards !== world) throw new Error(`dense layout padded for ${layout.shards} ranks, world is ${world}`);
    const S = layout.shardLength,
      lo = rank * S,
      hi = lo + S;
    this.#chunk = chunkElements(DTYPE_BYTES[layout.grad.dtype], world, S);
    this.gradShard = world === 1 ? layout.grad : b.zeros([S], layout.grad.dtype);
    this.#staging = world > 1 && this.#chunk < S ? b.empty([world * this.#chunk], layout.grad.dtype) : null;
    this.pieces = [];
    for (const { param, offset } of layout.entries) {
      const n = shapeNumel(param.shape);
      const from = Math.max(offset, lo),
        to = Math.min(offset + n, hi);
      if (from >= to) continue;
      // A whole parameter keeps its shape (checkpoint names and shapes match the single-rank ones).
      const shape = to - from === n ? param.shape : [to - from];
      this.pieces.push({
        param,
        start: from - offset,
        end: to - offset,
        value: b.view(layout.value, shape, from),
        grad: b.view(this.gradShard, shape, from - lo),
      });
    }
  }

  /** Sums every rank's dense gradients into this rank's shard. */
  reduceScatter(): void {
    const { comm, b, layout } = this;
    if (!comm) return; // one rank: the shard is the whole flat layout
    const S = layout.shardLength,
      C = this.#chunk,
      W = comm.world;
    if (!this.#staging) return comm.reduceScatter(layout.grad, this.gradShard);
    for (let off = 0; off < S; off += C) {
      const c = Math.min(C, S - off);
      for (let src = 0; src < W; src++)
        b.copy(b.view(layout.grad, [c], src * S + off), b.view(this.#staging, [c], src * c));
      comm.reduceScatter(b.view(this.#staging, [W * c], 0), b.view(this.gradShard, [c], off));
    }
  }

  /**
   * Every rank's summed slice into every rank's flat gradient, which then holds the whole summed gradient
   * (distributed Muon's owners read their matrices' from it; optimizer.ts). Overwrites the local gradients, which
   * the next step zeroes anyway.
   */
  allGatherGradients(): void {
    const { comm, layout } = this;
    if (!comm || comm.world === 1) return; // one rank: the shard is the flat gradient
    comm.allGather(this.gradShard, layout.grad);
  }

  /** Every rank's updated slice into every rank's weights. */
  allGather(): void {
    const { comm, b, layout } = this;
    if (!comm) return; // one rank: the shard is the whole flat layout
    const S = layout.shardLength;
    comm.allGather(b.view(layout.value, [S], comm.rank * S), layout.value);
  }

  free(): void {
    if (this.gradShard !== this.layout.grad) this.gradShard.free();
    this.#staging?.free();
  }
}
