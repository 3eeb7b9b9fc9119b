/**
 * Joins a multi-rank run: rendezvous through the store (rendezvous.ts), then the device's transports — on the CPU
 * backend the CPU mesh, which carries both the collectives and the expert exchange. One rank needs none of this.
 */
import type { Backend } from '../tensor/backend.ts';
import { CpuExpertExchange } from '../moe/rdep/cpu.ts';
import type { Parallelism } from '../train/step.ts';
import { UserError } from '../util/errors.ts';
import { CpuCollectives } from './cpu/collectives.ts';
import { CpuMesh } from './cpu/mesh.ts';
import type { DistEnv } from './env.ts';
import { rendezvous } from './rendezvous.ts';

export interface DistRun extends Parallelism {
  env: DistEnv;
  /** Rank 0's `value` for `key`, on every rank (the run id, chosen once). */
  agree(key: string, value: string): Promise<string>;
  /** Leaves the run after a success: waits (bounded) until every rank has left, so none loses the store mid-call. */
  close(): Promise<void>;
  /** Leaves at once after a failure (peers may be dead; nothing is waited for). */
  abort(): Promise<void>;
}

/** How long a collective may wait for the slowest rank (NMOE_COMM_TIMEOUT_S, default 300). The rendezvous has its
 *  own timeout, NMOE_RDZV_TIMEOUT_S. */
function commTimeoutMs(): number {
  const raw = process.env.NMOE_COMM_TIMEOUT_S ?? '300';
  const s = Number(raw);
  if (!Number.isFinite(s) || s <= 0) throw new UserError(`NMOE_COMM_TIMEOUT_S=${raw} is not a positive number of seconds. Fix: unset it (default 300).`);
  return s * 1000;
}

export async function joinRun(env: DistEnv, backend: Backend, numExperts: number): Promise<DistRun | null> {
  if (env.worldSize === 1) return null;
  if (backend.device !== 'cpu') {
    throw new UserError(
      `WORLD_SIZE=${env.worldSize} on ${backend.name}: multi-GPU training (NCCL and RDEP over CUDA IPC) is not in this build yet. ` +
        'Fix: run multi-rank training on the CPU backend (device = "cpu"), or train on one GPU.',
    );
  }
  const timeoutMs = commTimeoutMs();
  const rdzv = await rendezvous(env);
  const host = env.nnodes === 1 ? '127.0.0.1' : (process.env.NMOE_MESH_HOST ?? (await import('node:os')).hostname());
  const mesh = await CpuMesh.connect(env.rank, env.worldSize, rdzv.store, { host, timeoutMs });
  return {
    env,
    comm: new CpuCollectives(mesh),
    ep: new CpuExpertExchange(mesh, numExperts),
    async agree(key, value) {
      if (env.rank === 0) await rdzv.store.set(`agree/${key}`, value);
      return Buffer.from(await rdzv.store.get(`agree/${key}`, timeoutMs)).toString();
    },
    async close() {
      await mesh.close();
      await rdzv.close();
    },
    async abort() {
      await mesh.close();
      await rdzv.abort();
    },
  };
}
