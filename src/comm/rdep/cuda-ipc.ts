/**
 * RDEP over CUDA IPC between the GPUs of one node (kernels in src/tensor/cuda/kernels/rdep.cu). Each rank
 * allocates one symmetric buffer, publishes its IPC handle through the rendezvous store and maps every peer's.
 * Dispatch and return are kernels storing rows straight into the peer's buffer, then a barrier through IPC-mapped
 * flags; no NCCL call is on this path. A barrier that waits longer than the timeout records the missing rank in a
 * device word instead of hanging, and `check()` (called by the trainer once a step) turns it into an error naming it.
 *
 * The buffer holds `exchanges` receive areas, each sized for the worst case (every rank's rows routed to this rank's
 * experts, so no token is ever dropped), and as many return areas. A dispatched or returned tensor is a view of
 * an area, held until it is freed: the MoE layer keeps its dispatched rows and returned outputs for the backward
 * pass, so training needs one area of each kind per MoE layer, plus one for the backward pass's own exchange.
 * Rows are never copied out of the shared buffer.
 */
import type { CudaBackend } from '../../tensor/cuda/backend.ts';
import { CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS, IPC_HANDLE_BYTES, check, cu, outU64 } from '../../tensor/cuda/driver.ts';
import { KERNEL_CONSTANTS } from '../../tensor/cuda/kernel-constants.ts';
import { RDEP } from '../../tensor/cuda/kernels/rdep.ts';
import { type CudaTensor, asCuda } from '../../tensor/cuda/tensor.ts';
import { AreaPool } from './areas.ts';
import type { MoePlan } from '../../tensor/backend.ts';
import { DTYPE_BYTES, type DType, type Tensor } from '../../tensor/tensor.ts';
import { UserError } from '../../util/errors.ts';
import type { StoreClient } from '../store.ts';
import type { ExpertExchange, ExpertRoute } from '../../tensor/expert-exchange.ts';

/** The Peers struct of rdep.cu holds this many buffer pointers: one node's ranks. */
const MAX_RANKS = KERNEL_CONSTANTS.RDEP_MAX_RANKS;
const FLAGS_BYTES = 256;
/** Blocks per SM for the row moves (grid-stride loops): enough warps in flight to fill NVLink from every SM. */
const MOVE_BLOCKS_PER_SM = 4;
const align = (n: number) => Math.ceil(n / 256) * 256;

/** Byte offsets in the shared buffer (the same on every rank) and its receive and return areas. */
interface Layout {
  counts: number;
  starts: number;
  recv: AreaPool;
  ret: AreaPool;
}

export interface IpcExchangeOptions {
  rank: number;
  world: number;
  experts: number;
  /** Row width (the model dim) and dtype of the rows that travel. */
  dim: number;
  dtype: DType;
  /** Most routed rows this rank sends per exchange (local tokens x top-k); the buffers are sized for it. */
  rows: number;
  /** Dispatched (and returned) tensors alive at once: MoE layers + 1 when training. */
  exchanges: number;
  timeoutMs: number;
}

class IpcRoute implements ExpertRoute {
  constructor(
    readonly offsets: Tensor,
    readonly rows: number,
    /** Rows this rank sent (its plan's rows). */
    readonly sent: number,
    readonly dest: Tensor,
    readonly destRank: Tensor,
    readonly origin: Tensor,
    readonly originRank: Tensor,
    /** i32 [E + 1]: where each global expert's rows start among the rows this rank sends (its plan's offsets). */
    readonly planOffsets: bigint,
    private readonly segments: { free(): void },
  ) {}

  free(): void {
    for (const t of [this.dest, this.destRank, this.origin, this.originRank]) t.free();
    this.segments.free();
  }
}

export class CudaIpcExchange implements ExpertExchange {
  #epoch = 0;
  readonly #local: number;
  readonly #rowVecs: number;
  /** The Peers table (rdep.cu) every kernel takes by value. */
  readonly #peerTable: Uint8Array;
  readonly #moveBlocks: number;

  private constructor(
    private readonly b: CudaBackend,
    private readonly o: IpcExchangeOptions,
    private readonly base: bigint,
    private readonly peers: bigint[],
    private readonly layout: Layout,
    private readonly err: CudaTensor,
  ) {
    this.#local = o.experts / o.world;
    this.#rowVecs = (o.dim * DTYPE_BYTES[o.dtype]) / 16;
    this.#moveBlocks = MOVE_BLOCKS_PER_SM * b.dev.info.multiprocessors;
    const table = new BigUint64Array(MAX_RANKS);
    peers.forEach((p, j) => (table[j] = p));
    this.#peerTable = new Uint8Array(table.buffer);
  }

  get rank(): number {
    return this.o.rank;
  }

  get world(): number {
    return this.o.world;
  }

  static async create(b: CudaBackend, store: StoreClient, o: IpcExchangeOptions): Promise<CudaIpcExchange> {
    if (o.world > MAX_RANKS)
      throw new UserError(
        `RDEP over CUDA IPC joins the GPUs of one node, at most ${MAX_RANKS}; this run has ${o.world} ranks.`,
      );
    const rowBytes = o.dim * DTYPE_BYTES[o.dtype];
    if (rowBytes % 16 !== 0)
      throw new UserError(
        `RDEP moves rows in 16-byte vectors: dim = ${o.dim} (${o.dtype}) is ${rowBytes} bytes a row. Fix: a dim that is a multiple of 8.`,
      );
    const local = o.experts / o.world;
    const recvBytes = align(o.world * o.rows * rowBytes),
      retBytes = align(o.rows * rowBytes);
    const counts = FLAGS_BYTES,
      starts = counts + align(4 * o.world * local),
      recv = starts + align(4 * o.world * local);
    const ret = recv + o.exchanges * recvBytes,
      total = ret + o.exchanges * retBytes;
    const free = new BigUint64Array(1),
      all = new BigUint64Array(1);
    check('cuMemGetInfo', cu.memGetInfo(free, all));
    if (total > Number(free[0]!) * 0.9) {
      const gib = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;
      throw new UserError(
        `RDEP needs ${gib(total)} per GPU for its worst-case buffers (${o.exchanges} exchanges held at once, one per MoE layer + 1, each ` +
          `${gib(recvBytes)}: ${o.world} ranks x ${o.rows} routed rows x ${rowBytes} bytes may all land on one rank), but only ` +
          `${gib(Number(free[0]!))} is free. Fix: lower batch_size or seq_len (rows per rank), or n_activated_experts.`,
      );
    }
    const base = outU64('cuMemAlloc', cu.memAlloc, total);
    check('cuMemsetD8Async', cu.memsetD8Async(base, 0, FLAGS_BYTES, b.dev.stream));
    check('cuStreamSynchronize', cu.streamSynchronize(b.dev.stream)); // flags are zero before any peer can see them
    const handle = new Uint8Array(IPC_HANDLE_BYTES);
    check('cuIpcGetMemHandle', cu.ipcGetMemHandle(handle, base));
    await store.set(`rdep/ipc/${o.rank}`, handle);
    const peers: bigint[] = [];
    for (let j = 0; j < o.world; j++) {
      if (j === o.rank) peers.push(base);
      else {
        const h = await store.get(`rdep/ipc/${j}`, o.timeoutMs);
        peers.push(
          outU64(
            'cuIpcOpenMemHandle',
            cu.ipcOpenMemHandle,
            { reserved: Array.from(h) },
            CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS,
          ),
        );
      }
    }
    const err = asCuda(b.zeros([1], 'i32'));
    const layout = {
      counts,
      starts,
      recv: new AreaPool(recv, recvBytes, o.exchanges, 'receive'),
      ret: new AreaPool(ret, retBytes, o.exchanges, 'return'),
    };
    return new CudaIpcExchange(b, o, base, peers, layout, err);
  }

  #barrier(): void {
    const ns = Math.round(this.o.timeoutMs * 1e6);
    this.b.dev.run(
      RDEP,
      'rdep_barrier',
      { grid: [1], block: 32 },
      {
        peers: this.#peerTable,
        me: this.o.rank,
        world: this.o.world,
        epoch: ++this.#epoch,
        timeout_ns: ns,
        err: this.err,
      },
    );
  }

  /** An area of `pool` for this call's rows; a barrier first if a peer could still be reading it. */
  #take(pool: AreaPool): number {
    const { index, fresh } = pool.take(this.#epoch);
    if (!fresh) this.#barrier();
    return index;
  }

  route(plan: MoePlan): IpcRoute {
    const { b, o, layout: L } = this;
    const local = this.#local;
    const { counts, offsets } = plan;
    const exchanged = { peers: this.#peerTable, counts_off: L.counts, starts_off: L.starts, experts: o.experts, local };
    b.dev.run(
      RDEP,
      'rdep_route_send',
      { grid: [Math.ceil(o.experts / 256)], block: 256 },
      { counts, offsets, ...exchanged, me: o.rank },
    );
    this.#barrier();
    const n = plan.numTokens * plan.topK;
    if (n > o.rows) throw new Error(`RDEP route: the plan has ${n} rows, the exchange was sized for at most ${o.rows}`);
    // At most every rank's rows land here, and each rank routes at most o.rows (the plans of lockstep inference differ
    // from rank to rank, so this rank's own n bounds nothing).
    const cap = o.world * o.rows;
    const dest = asCuda(b.empty([n], 'i32')),
      destRank = asCuda(b.empty([n], 'i32'));
    const origin = asCuda(b.empty([cap], 'i32')),
      originRank = asCuda(b.empty([cap], 'i32')),
      segCounts = asCuda(b.empty([local], 'i32'));
    b.dev.run(
      RDEP,
      'rdep_place',
      { grid: [o.experts + local * o.world], block: 128 },
      {
        counts,
        offsets,
        ...exchanged,
        world: o.world,
        me: o.rank,
        dest,
        dest_rank: destRank,
        origin,
        origin_rank: originRank,
        seg_counts: segCounts,
      },
    );
    const segments = b.moeSegments(segCounts, cap);
    segCounts.free();
    return new IpcRoute(segments.offsets, cap, n, dest, destRank, origin, originRank, asCuda(offsets).ptr, segments);
  }

  dispatch(rows: Tensor, route: ExpertRoute): Tensor {
    const r = route as IpcRoute,
      x = asCuda(rows),
      pool = this.layout.recv;
    const area = this.#take(pool);
    const first = ((this.o.rank + 1) % this.o.world) * this.#local; // the plan's first expert of the next rank
    this.b.dev.run(
      RDEP,
      'rdep_dispatch',
      { grid: [this.#moveBlocks], block: 256 },
      {
        x,
        dest: r.dest,
        dest_rank: r.destRank,
        offsets: r.planOffsets,
        first,
        peers: this.#peerTable,
        recv_off: pool.offset(area),
        row_vecs: this.#rowVecs,
        rows: x.shape[0]!,
      },
    );
    this.#barrier();
    return pool.view(this.base, area, [r.rows, this.o.dim], x.dtype, () => this.#epoch);
  }

  combine(rows: Tensor, route: ExpertRoute): Tensor {
    const r = route as IpcRoute,
      y = asCuda(rows),
      pool = this.layout.ret;
    const area = this.#take(pool);
    const received = asCuda(r.offsets).ptr + BigInt(4 * this.#local); // offsets[El]: the rows that arrived here
    this.b.dev.run(
      RDEP,
      'rdep_return',
      { grid: [this.#moveBlocks], block: 256 },
      {
        y,
        origin: r.origin,
        origin_rank: r.originRank,
        received,
        peers: this.#peerTable,
        ret_off: pool.offset(area),
        row_vecs: this.#rowVecs,
      },
    );
    this.#barrier();
    return pool.view(this.base, area, [r.sent, this.o.dim], y.dtype, () => this.#epoch);
  }

  /** Throws if a barrier timed out since the last check (reads one word: call it where the host syncs anyway). */
  async check(): Promise<void> {
    const missing = (await this.b.read(this.err))[0]!;
    if (missing)
      throw new UserError(
        `rank ${this.o.rank}: an RDEP barrier waited ${this.o.timeoutMs / 1000} s for rank ${missing - 1} (stuck, dead or out of step?)`,
      );
  }

  close(): void {
    check('cuCtxSynchronize', cu.ctxSynchronize());
    this.peers.forEach((p, j) => j !== this.o.rank && check('cuIpcCloseMemHandle', cu.ipcCloseMemHandle(p)));
    check('cuMemFree', cu.memFree(this.base));
    this.err.free();
  }
}
