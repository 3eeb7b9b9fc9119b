/**
 * Joins a multi-rank run: rendezvous through the store (rendezvous.ts), then the device's transports — on the CPU
 * backend the CPU mesh, which carries both the collectives and the expert exchange; on the GPUs of one node NCCL
 * for the collectives and RDEP over CUDA IPC for the experts. One rank needs none of this.
 */
import type { ParallelConfig } from '../config/sections.ts';
import { moeLayerCount } from '../model/spec.ts';
import type { Backend } from '../tensor/backend.ts';
import type { Communicator } from '../tensor/communicator.ts';
import type { ExpertExchange } from '../tensor/expert-exchange.ts';
import { CpuExpertExchange } from './rdep/cpu.ts';
import { UserError, positiveEnv } from '../util/errors.ts';
import { CpuCollectives } from './cpu/collectives.ts';
import { CpuMesh } from './cpu/mesh.ts';
import type { DistEnv } from './env.ts';
import { rendezvous } from './rendezvous.ts';

/** Several ranks: the collectives (dense gradients, router loads, the loss) and the expert exchange (RDEP). */
export interface Parallelism {
  comm: Communicator;
  ep: ExpertExchange;
}

export interface DistRun extends Parallelism {
  env: DistEnv;
  /** Rank 0's `value` for `key`, on every rank (the run id, chosen once). */
  agree(key: string, value: string): Promise<string>;
  /** Throws a transport error raised since the last call (GPU: NCCL's async errors, RDEP barrier timeouts). */
  check(): Promise<void>;
  /** Leaves the run after a success: waits (bounded) until every rank has left, so none loses the store mid-call. */
  close(): Promise<void>;
  /** Leaves at once after a failure (peers may be dead; nothing is waited for). */
  abort(): Promise<void>;
}

/** What the transports are sized for. */
export interface ModelShape {
  experts: number;
  dim: number;
  topK: number;
  /** Tokens per rank per step: local batch x seq_len. */
  tokens: number;
  /** Expert exchanges whose rows are held at once: MoE layers + 1 when training (see CudaIpcExchange). */
  exchanges: number;
}

/** What a training run's transports are sized for: its model, with the global batch split over `world` ranks. */
export function modelShape(cfg: ParallelConfig, world: number): ModelShape {
  return {
    experts: cfg.n_routed_experts,
    dim: cfg.dim,
    topK: cfg.n_activated_experts,
    tokens: (cfg.batch_size / world) * cfg.seq_len,
    exchanges: moeLayerCount(cfg) + 1,
  };
}

/** How long a collective may wait for the slowest rank (NMOE_COMM_TIMEOUT_S, default 300). The rendezvous has its
 *  own timeout, NMOE_RDZV_TIMEOUT_S. */
const commTimeoutMs = () => positiveEnv('NMOE_COMM_TIMEOUT_S', 300, 'seconds') * 1000;

export async function joinRun(env: DistEnv, backend: Backend, shape: ModelShape): Promise<DistRun | null> {
  if (env.worldSize === 1) return null;
  const timeoutMs = commTimeoutMs();
  const rdzv = await rendezvous(env);
  const agree = async (key: string, value: string) => {
    if (env.rank === 0) await rdzv.store.set(`agree/${key}`, value);
    return Buffer.from(await rdzv.store.get(`agree/${key}`, timeoutMs)).toString();
  };
  try {
    if (backend.device === 'cpu') {
      const host =
        env.nnodes === 1 ? '127.0.0.1' : (process.env.NMOE_MESH_HOST ?? (await import('node:os')).hostname());
      const mesh = await CpuMesh.connect(env.rank, env.worldSize, rdzv.store, { host, timeoutMs });
      return {
        env,
        agree,
        comm: new CpuCollectives(mesh),
        ep: new CpuExpertExchange(mesh, shape.experts),
        check: async () => {},
        close: async () => {
          await mesh.close();
          await rdzv.close();
        },
        abort: async () => {
          await mesh.close();
          await rdzv.abort();
        },
      };
    }
    if (env.nnodes > 1) {
      throw new UserError(
        `${env.nnodes} nodes on the GPU: RDEP across nodes (NVSHMEM) is not in this build yet. Fix: train on the GPUs of one node.`,
      );
    }
    const { CudaBackend } = await import('../tensor/cuda/backend.ts');
    const { NcclCommunicator } = await import('./cuda/nccl.ts');
    const { CudaIpcExchange } = await import('./rdep/cuda-ipc.ts');
    const b = backend as InstanceType<typeof CudaBackend>;
    const comm = await NcclCommunicator.create(env.rank, env.worldSize, rdzv.store, b.dev.stream, timeoutMs);
    const ep = await CudaIpcExchange.create(b, rdzv.store, {
      rank: env.rank,
      world: env.worldSize,
      experts: shape.experts,
      dim: shape.dim,
      dtype: 'bf16',
      rows: shape.tokens * shape.topK,
      exchanges: shape.exchanges,
      timeoutMs,
    });
    return {
      env,
      agree,
      comm,
      ep,
      check: async () => {
        comm.checkAsync();
        await ep.check();
      },
      close: async () => {
        ep.close();
        await comm.close();
        await rdzv.close();
      },
      abort: async () => {
        comm.abort();
        await rdzv.abort();
      },
    };
  } catch (err) {
    await rdzv.abort();
    throw err;
  }
}
