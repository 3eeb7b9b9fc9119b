/**
 * NCCL through FFI: the collectives of data parallelism on the GPU (dense gradients for ZeRO-2, router loads, the
 * loss), enqueued on the backend's stream like any kernel. The communicator is built from a unique id that rank 0
 * creates and shares through the rendezvous store. Only the calls nmoe uses are bound.
 */
import koffi from 'koffi';
import type { Communicator } from '../../tensor/communicator.ts';
import { LIBRARIES, loadLibrary } from '../../tensor/cuda/libraries.ts';
import { asCuda } from '../../tensor/cuda/tensor.ts';
import type { DType, Tensor } from '../../tensor/tensor.ts';
import { UserError } from '../../util/errors.ts';
import type { StoreClient } from '../store.ts';

const UNIQUE_ID_BYTES = 128;
koffi.struct('ncclUniqueId', { internal: koffi.array('uint8_t', UNIQUE_ID_BYTES) });

const { lib } = loadLibrary(LIBRARIES.nccl);
const f = (sig: string) => lib.func(sig);
const nccl = {
  getUniqueId: f('int ncclGetUniqueId(_Out_ uint8_t *id)'),
  commInitRank: f('int ncclCommInitRank(_Out_ uint64_t *comm, int nranks, ncclUniqueId id, int rank)'),
  allReduce: f(
    'int ncclAllReduce(uint64_t send, uint64_t recv, size_t count, int dtype, int op, uint64_t comm, uint64_t stream)',
  ),
  reduceScatter: f(
    'int ncclReduceScatter(uint64_t send, uint64_t recv, size_t recvcount, int dtype, int op, uint64_t comm, uint64_t stream)',
  ),
  allGather: f(
    'int ncclAllGather(uint64_t send, uint64_t recv, size_t sendcount, int dtype, uint64_t comm, uint64_t stream)',
  ),
  broadcast: f(
    'int ncclBroadcast(uint64_t send, uint64_t recv, size_t count, int dtype, int root, uint64_t comm, uint64_t stream)',
  ),
  commGetAsyncError: f('int ncclCommGetAsyncError(uint64_t comm, _Out_ int *result)'),
  commAbort: f('int ncclCommAbort(uint64_t comm)'),
  commDestroy: f('int ncclCommDestroy(uint64_t comm)'),
  getErrorString: f('const char *ncclGetErrorString(int result)'),
};

/** ncclDataType_t and ncclRedOp_t values (nccl.h). */
const NCCL_DTYPE: Record<DType, number> = { i32: 2, f32: 7, bf16: 9 };
const NCCL_SUM = 0;

function check(api: string, code: number, rank: number): void {
  if (code !== 0)
    throw new UserError(
      `rank ${rank}: ${api} failed: ${nccl.getErrorString(code) as string} (NCCL error ${code}). Set NCCL_DEBUG=INFO for NCCL's own log.`,
    );
}

export class NcclCommunicator implements Communicator {
  private constructor(
    readonly rank: number,
    readonly world: number,
    private readonly comm: bigint,
    private readonly stream: bigint,
  ) {}

  /** Rank 0 makes the unique id, every rank reads it from the store, then all join (NCCL blocks until all have). */
  static async create(
    rank: number,
    world: number,
    store: StoreClient,
    stream: bigint,
    timeoutMs: number,
  ): Promise<NcclCommunicator> {
    if (rank === 0) {
      const id = new Uint8Array(UNIQUE_ID_BYTES);
      check('ncclGetUniqueId', nccl.getUniqueId(id), rank);
      await store.set('nccl/id', id);
    }
    const id = await store.get('nccl/id', timeoutMs);
    const out = new BigUint64Array(1);
    check('ncclCommInitRank', nccl.commInitRank(out, world, { internal: Array.from(id) }, rank), rank);
    return new NcclCommunicator(rank, world, out[0]!, stream);
  }

  allReduce(t: Tensor): void {
    const c = asCuda(t);
    check(
      'ncclAllReduce',
      nccl.allReduce(c.ptr, c.ptr, c.numel, NCCL_DTYPE[c.dtype], NCCL_SUM, this.comm, this.stream),
      this.rank,
    );
  }

  reduceScatter(src: Tensor, dst: Tensor): void {
    const s = asCuda(src),
      d = asCuda(dst);
    if (s.numel !== d.numel * this.world)
      throw new Error(`reduceScatter: src of ${s.numel} elements for ${this.world} blocks of ${d.numel}`);
    check(
      'ncclReduceScatter',
      nccl.reduceScatter(s.ptr, d.ptr, d.numel, NCCL_DTYPE[d.dtype], NCCL_SUM, this.comm, this.stream),
      this.rank,
    );
  }

  allGather(src: Tensor, dst: Tensor): void {
    const s = asCuda(src),
      d = asCuda(dst);
    if (d.numel !== s.numel * this.world)
      throw new Error(`allGather: dst of ${d.numel} elements for ${this.world} blocks of ${s.numel}`);
    check(
      'ncclAllGather',
      nccl.allGather(s.ptr, d.ptr, s.numel, NCCL_DTYPE[s.dtype], this.comm, this.stream),
      this.rank,
    );
  }

  broadcast(t: Tensor, root: number): void {
    const c = asCuda(t);
    check(
      'ncclBroadcast',
      nccl.broadcast(c.ptr, c.ptr, c.numel, NCCL_DTYPE[c.dtype], root, this.comm, this.stream),
      this.rank,
    );
  }

  /** Throws NCCL's asynchronous error (a peer lost, a network failure), if any. */
  checkAsync(): void {
    const err = new Int32Array(1);
    check('ncclCommGetAsyncError', nccl.commGetAsyncError(this.comm, err), this.rank);
    check('NCCL (asynchronous)', err[0]!, this.rank);
  }

  async close(): Promise<void> {
    check('ncclCommDestroy', nccl.commDestroy(this.comm), this.rank);
  }

  /** Tears the communicator down without waiting for peers (this rank is failing). */
  abort(): void {
    nccl.commAbort(this.comm);
  }
}
