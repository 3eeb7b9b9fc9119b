/**
 * Where this process sits in a distributed run: its rank, the world size, its node, and the address of the
 * rendezvous store. Read from torchrun's environment contract (what `nmoe launch`, torchrun and Kubeflow's
 * PyTorchJob set), else from Slurm's srun variables, else this is a single process: rank 0 of 1.
 *
 * Slurm sets SLURM_PROCID (0) in a job's batch script too, where no srun started the process: only srun's step
 * launch sets SLURM_STEP_NUM_TASKS. A batch script of a multi-node or multi-task job that runs `nmoe train` itself
 * would wait out the rendezvous for ranks nobody starts, so that is an error at once.
 *
 * Ranks must be numbered node by node (rank = node_rank · local_world_size + local_rank): expert parallelism
 * places a rank's peers on its node by that arithmetic, so any other layout is rejected here rather than
 * discovered as a hang later.
 */
import { UserError } from '../util/errors.ts';

export interface DistEnv {
  rank: number;
  worldSize: number;
  localRank: number;
  localWorldSize: number;
  nodeRank: number;
  nnodes: number;
  masterAddr: string;
  masterPort: number;
}

/** torchrun's default, so a cluster's firewall rules written for torchrun hold for nmoe too. */
export const DEFAULT_MASTER_PORT = 29500;
const LOOPBACK = '127.0.0.1';

/** A number together with the variable it came from, so that errors name what the user actually set. */
interface Sourced {
  name: string;
  value: number;
}

type Env = Record<string, string | undefined>;

export function readDistEnv(env: Env = process.env): DistEnv {
  if (['RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE'].some((name) => env[name] !== undefined))
    return fromTorchrun(env);
  if (inSlurmBatchScript(env)) requireOneSlurmTask(env);
  else if (env.SLURM_PROCID !== undefined) return fromSlurmStep(env);
  return {
    rank: 0,
    worldSize: 1,
    localRank: 0,
    localWorldSize: 1,
    nodeRank: 0,
    nnodes: 1,
    ...master(env, 1, undefined),
  };
}

function fromTorchrun(env: Env): DistEnv {
  requireTogether(env, 'RANK', 'WORLD_SIZE', 'set both (torchrun and nmoe launch do)');
  requireTogether(env, 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'set both, or neither for one process per node');
  if (env.RANK === undefined) {
    throw new UserError(
      `LOCAL_RANK=${env.LOCAL_RANK} is set but RANK and WORLD_SIZE are not. ` +
        'Fix: set RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE together, or none of them for a single process.',
    );
  }
  const rank = whole(env, 'RANK', 0);
  const worldSize = whole(env, 'WORLD_SIZE', 1);
  // Kubeflow's PyTorchJob sets only RANK and WORLD_SIZE: one process per pod, so each pod is its own node.
  const local =
    env.LOCAL_RANK === undefined
      ? { rank: { name: 'LOCAL_RANK', value: 0 }, worldSize: { name: 'LOCAL_WORLD_SIZE', value: 1 } }
      : { rank: whole(env, 'LOCAL_RANK', 0), worldSize: whole(env, 'LOCAL_WORLD_SIZE', 1) };
  return { ...layout(rank, worldSize, local.rank, local.worldSize), ...master(env, worldSize.value, undefined) };
}

/** Whether this process is a Slurm job's batch script itself rather than a task that srun started. */
export function inSlurmBatchScript(env: Env = process.env): boolean {
  return env.SLURM_PROCID !== undefined && env.SLURM_STEP_NUM_TASKS === undefined;
}

/** An srun task: the step's own variables, which srun sets even with --preserve-env (that keeps the job's SLURM_NTASKS). */
function fromSlurmStep(env: Env): DistEnv {
  if (env.SLURM_LOCALID === undefined) {
    throw new UserError(
      `SLURM_PROCID=${env.SLURM_PROCID} is set but SLURM_LOCALID is not. Fix: launch with srun, which sets it (e.g. srun --ntasks-per-node=8 nmoe train).`,
    );
  }
  const localWorldSize = stepTasksPerNode(env);
  const rank = whole(env, 'SLURM_PROCID', 0);
  const dist = layout(rank, whole(env, 'SLURM_STEP_NUM_TASKS', 1), whole(env, 'SLURM_LOCALID', 0), localWorldSize);
  if (env.SLURM_NODEID !== undefined && whole(env, 'SLURM_NODEID', 0).value !== dist.nodeRank) {
    throw new UserError(
      `SLURM_NODEID=${env.SLURM_NODEID} does not match SLURM_PROCID=${rank.value} with ${localWorldSize.value} tasks per node (node ${dist.nodeRank}). ` +
        'Fix: number ranks node by node with srun --distribution=block.',
    );
  }
  const nodelist = env.SLURM_STEP_NODELIST ?? env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
  return { ...dist, ...master(env, dist.worldSize, nodelist === undefined ? undefined : firstSlurmHost(nodelist)) };
}

/**
 * A job's batch script (SLURM_PROCID without srun's step variables) is one process on the job's first node. That
 * is a one-process run when the job asked for one task on one node; otherwise the other ranks would never start.
 */
function requireOneSlurmTask(env: Env): void {
  const nodes = env.SLURM_JOB_NUM_NODES ?? env.SLURM_NNODES;
  const counts = [
    { name: 'SLURM_JOB_NUM_NODES', text: nodes, what: 'nodes' },
    { name: 'SLURM_NTASKS', text: env.SLURM_NTASKS, what: 'tasks' },
  ].filter((c) => c.text !== undefined && c.text !== '1');
  if (counts.length === 0) return;
  const job = env.SLURM_JOB_ID === undefined ? 'a Slurm job' : `Slurm job ${env.SLURM_JOB_ID}`;
  const asked = counts.map((c) => `${c.name}=${c.text}`).join(', ');
  throw new UserError(
    `this process runs in the batch script of ${job}, not under srun (SLURM_PROCID is set but SLURM_STEP_NUM_TASKS is not), ` +
      `and the job has ${asked}: the other ranks would never start. ` +
      'Fix: start one `nmoe launch` per node with srun (srun --ntasks-per-node=1 nmoe launch --nnodes $SLURM_JOB_NUM_NODES …), or the ranks themselves with `srun --ntasks-per-node=N nmoe train`.',
  );
}

/** SLURM_STEP_TASKS_PER_NODE is a compressed list such as `4(x2),3`; nmoe needs the same count on every node. */
function stepTasksPerNode(env: Env): Sourced {
  const name = 'SLURM_STEP_TASKS_PER_NODE';
  const text = env[name];
  if (text === undefined)
    throw new UserError(
      `SLURM_STEP_NUM_TASKS is set but ${name} is not. Fix: launch with srun --ntasks-per-node=N, which sets both.`,
    );
  const counts = new Set(text.split(',').map((item) => /^(\d+)(?:\(x\d+\))?$/.exec(item)?.[1]));
  const [only] = counts;
  if (counts.size !== 1 || only === undefined || Number(only) < 1) {
    throw new UserError(
      `${name}=${text} does not give every node the same number of tasks. Fix: launch with srun --ntasks-per-node=N.`,
    );
  }
  return { name, value: Number(only) };
}

/** The first host of a Slurm node list: `gpu[01-04],gpu07` → `gpu01`, `rack[1-2]-n[3,5]` → `rack1-n3`. */
export function firstSlurmHost(nodelist: string): string {
  let depth = 0;
  let end = nodelist.length;
  for (let i = 0; i < nodelist.length; i++) {
    const c = nodelist[i];
    if (c === '[') depth++;
    else if (c === ']') depth--;
    else if (c === ',' && depth === 0) {
      end = i;
      break;
    }
  }
  return nodelist.slice(0, end).replace(/\[([^\]]*)\]/g, (_, ranges: string) => ranges.split(',')[0]!.split('-')[0]!);
}

function layout(rank: Sourced, worldSize: Sourced, localRank: Sourced, localWorldSize: Sourced) {
  if (rank.value >= worldSize.value) {
    throw new UserError(
      `${rank.name}=${rank.value} must be < ${worldSize.name} (${worldSize.value}). Fix: ranks run from 0 to ${worldSize.value - 1}.`,
    );
  }
  if (worldSize.value % localWorldSize.value !== 0) {
    throw new UserError(
      `${worldSize.name}=${worldSize.value} is not a multiple of ${localWorldSize.name}=${localWorldSize.value}. Fix: run the same number of processes on every node.`,
    );
  }
  if (localRank.value >= localWorldSize.value) {
    throw new UserError(
      `${localRank.name}=${localRank.value} must be < ${localWorldSize.name} (${localWorldSize.value}). Fix: local ranks run from 0 to ${localWorldSize.value - 1}.`,
    );
  }
  if (localRank.value !== rank.value % localWorldSize.value) {
    throw new UserError(
      `${localRank.name}=${localRank.value} does not match ${rank.name}=${rank.value}: ` +
        `with ${localWorldSize.value} processes per node it must be ${rank.value % localWorldSize.value}. ` +
        'Fix: number ranks node by node (torchrun and nmoe launch do; srun needs --distribution=block).',
    );
  }
  return {
    rank: rank.value,
    worldSize: worldSize.value,
    localRank: localRank.value,
    localWorldSize: localWorldSize.value,
    nodeRank: Math.floor(rank.value / localWorldSize.value),
    nnodes: worldSize.value / localWorldSize.value,
  };
}

/** MASTER_ADDR wins over `fallbackAddr` (Slurm's first node); a single process needs no address at all. */
function master(
  env: Env,
  worldSize: number,
  fallbackAddr: string | undefined,
): { masterAddr: string; masterPort: number } {
  const masterAddr = env.MASTER_ADDR || fallbackAddr || (worldSize === 1 ? LOOPBACK : undefined);
  if (masterAddr === undefined) {
    throw new UserError(
      `MASTER_ADDR is not set for a world of ${worldSize} processes. Fix: set MASTER_ADDR to the address of the host running rank 0.`,
    );
  }
  if (env.MASTER_PORT === undefined) return { masterAddr, masterPort: DEFAULT_MASTER_PORT };
  const port = parseWhole(env.MASTER_PORT);
  if (port === undefined || port < 1 || port > 65535) {
    throw new UserError(
      `MASTER_PORT=${JSON.stringify(env.MASTER_PORT)} is not a TCP port. Fix: use a free port from 1 to 65535 (default ${DEFAULT_MASTER_PORT}).`,
    );
  }
  return { masterAddr, masterPort: port };
}

function requireTogether(env: Env, a: string, b: string, fix: string): void {
  for (const [set, unset] of [
    [a, b],
    [b, a],
  ] as const) {
    if (env[set] !== undefined && env[unset] === undefined)
      throw new UserError(`${set}=${env[set]} is set but ${unset} is not. Fix: ${fix}.`);
  }
}

function whole(env: Env, name: string, min: number): Sourced {
  const text = env[name] ?? '';
  const value = parseWhole(text);
  if (value === undefined || value < min) {
    throw new UserError(
      `${name}=${JSON.stringify(text)} is not a whole number >= ${min}. Fix: set ${name} to one, e.g. ${name}=${min}.`,
    );
  }
  return { name, value };
}

/** Digits only: no sign, no fraction, no spaces, no hex, which Number() would all accept. */
export function parseWhole(text: string): number | undefined {
  return /^\d{1,15}$/.test(text) ? Number(text) : undefined;
}
