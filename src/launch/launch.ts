/**
 * `nmoe launch`: runs this node's share of a distributed run, torchrun's way. It starts one process per GPU with
 * the environment contract of env.ts (RANK = node_rank · nproc_per_node + local_rank, …), and node 0's launcher
 * hosts the run's store, which the ranks rendezvous on and the launchers coordinate through.
 *
 * A run fails as a whole: when any rank exits non-zero or by a signal, its launcher publishes an abort key that
 * every launcher watches, and each stops its ranks — SIGTERM, then SIGKILL after a grace period. A launcher that
 * loses the store (node 0's launcher is gone) stops its ranks too. The launchers exit with the failing rank's
 * status. Ctrl-C, SIGTERM or SIGHUP on a launcher is forwarded to its ranks and, through the store, to every
 * node's ranks, which checkpoint and stop; a second one kills them.
 */
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UserError } from '../util/errors.ts';
import { LAUNCH_STORE_ENV, openRunStore } from '../comm/rendezvous.ts';
import { RankProcesses, describeExit, exitStatus } from './rank-processes.ts';
import { type StoreClient, StoreError } from '../comm/store.ts';

export interface LaunchPlan {
  nprocPerNode: number;
  nnodes: number;
  nodeRank: number;
  /** Node 0's address, as every rank and launcher reaches it. */
  masterAddr: string;
  /** The store's port on node 0; 0 picks a free one (one node only: the others could not know it). */
  masterPort: number;
  /** What each rank runs: argv[0] is the executable (see rankCommand). */
  command: string[];
  /** How long to wait for the store, the other nodes and, at the end, for every node to finish. */
  rdzvTimeoutMs: number;
}

/** How long the ranks get between SIGTERM and SIGKILL when the run fails. */
export const TERM_GRACE_MS = 5_000;

const BIN = fileURLToPath(new URL('../../bin/nmoe.js', import.meta.url));
const ABORT_KEY = 'launch/abort';
const STOP_KEY = 'launch/stop';

/** The nmoe commands that run on every rank; `nmoe launch` runs `train` unless its arguments start with another. */
const RANK_COMMANDS = ['train', 'eval', 'generate'];

/**
 * `nmoe train <args>` through this node binary (`nmoe eval|generate <args>` when `args` starts with that command),
 * or `entry` (a JS or TS module, like torchrun's script).
 */
export function rankCommand(entry: string | undefined, args: string[]): string[] {
  if (entry === undefined)
    return [process.execPath, BIN, ...(RANK_COMMANDS.includes(args[0] ?? '') ? args : ['train', ...args])];
  return [process.execPath, '--import', import.meta.resolve('tsx'), resolve(entry), ...args];
}

/** Runs this node's ranks to the end; the launcher's exit status. */
export async function launch(plan: LaunchPlan): Promise<number> {
  const run = await openRunStore({
    host:
      plan.nodeRank === 0
        ? { bind: '0.0.0.0', port: plan.masterPort, portLabel: `--master-port ${plan.masterPort}` }
        : undefined,
    remote: { addr: plan.masterAddr, port: plan.masterPort, hostedBy: "node 0's nmoe launch" },
    timeoutMs: plan.rdzvTimeoutMs,
  });
  try {
    await joinNodes(run.store, plan);
    const first = plan.nodeRank * plan.nprocPerNode;
    const ranks = `${first}-${first + plan.nprocPerNode - 1} of ${plan.nnodes * plan.nprocPerNode}`;
    say(`node ${plan.nodeRank} of ${plan.nnodes}: ranks ${ranks}, store ${plan.masterAddr}:${run.port}`);
    return await runRanks(run.store, plan, run.port);
  } finally {
    await run.close();
  }
}

/** Every launcher checks that it agrees with node 0 on the run's shape and that its node rank is its own. */
async function joinNodes(store: StoreClient, plan: LaunchPlan): Promise<void> {
  const shape = `--nnodes ${plan.nnodes} --nproc-per-node ${plan.nprocPerNode}`;
  if (plan.nodeRank === 0) await store.set('launch/shape', shape);
  const nodeZeroShape = Buffer.from(await store.get('launch/shape', plan.rdzvTimeoutMs)).toString();
  let problem: { reason: string; fix: string } | undefined;
  if (nodeZeroShape !== shape) {
    problem = {
      reason: `node ${plan.nodeRank} was started with ${shape} but node 0 with ${nodeZeroShape}`,
      fix: 'start every node with the same --nnodes and --nproc-per-node',
    };
  } else if ((await store.add(`launch/node/${plan.nodeRank}`, 1)) > 1) {
    problem = {
      reason: `a second nmoe launch joined this run as --node-rank ${plan.nodeRank}`,
      fix: `give every node its own --node-rank from 0 to ${plan.nnodes - 1} (on Kubernetes, $JOB_COMPLETION_INDEX)`,
    };
  }
  if (!problem) return;
  await publishAbort(store, problem.reason, 2); // the run cannot work: the other nodes stop too
  throw new UserError(`${problem.reason}. Fix: ${problem.fix}.`);
}

async function runRanks(store: StoreClient, plan: LaunchPlan, port: number): Promise<number> {
  const world = plan.nnodes * plan.nprocPerNode;
  let failure: number | undefined; // the exit status of the first failure, once there is one
  let failed!: (status: number) => void;
  const failedNotice = new Promise<number>((resolve) => (failed = resolve));
  let interrupts = 0;
  let finishing = false; // this node's ranks are done; the store may go away now without that being news

  const fail = (reason: string, status: number, origin: 'local' | 'remote') => {
    if (failure !== undefined) return;
    failure = status;
    if (origin === 'local') {
      say(`${reason}; stopping the other ${count(world - 1, 'rank')}`);
      void publishAbort(store, reason, status);
    } else {
      say(
        ranks.running > 0 ? `${reason}; stopping the ${count(ranks.running, 'rank')} of node ${plan.nodeRank}` : reason,
      );
    }
    ranks.stop(TERM_GRACE_MS);
    failed(status);
  };
  const interrupt = (signal: NodeJS.Signals, origin: string) => {
    if (++interrupts > 1) {
      say(`${signal} again: killing the ${count(ranks.running, 'rank')} of node ${plan.nodeRank}`);
      return ranks.signal('SIGKILL');
    }
    say(
      `${origin}: asking the ${count(ranks.running, 'rank')} of node ${plan.nodeRank} to stop after the step in flight (again to kill them)`,
    );
    // The ranks never had the terminal's hang-up to themselves; to them it means: stop.
    ranks.signal(signal === 'SIGHUP' ? 'SIGTERM' : signal);
  };

  const ranks = new RankProcesses(
    Array.from({ length: plan.nprocPerNode }, (_, local) => {
      const rank = plan.nodeRank * plan.nprocPerNode + local;
      const env = {
        ...process.env,
        RANK: String(rank),
        WORLD_SIZE: String(world),
        LOCAL_RANK: String(local),
        LOCAL_WORLD_SIZE: String(plan.nprocPerNode),
        MASTER_ADDR: plan.masterAddr,
        MASTER_PORT: String(port),
        [LAUNCH_STORE_ENV]: '1',
      };
      return { rank, argv: plan.command, env };
    }),
    (exit) => {
      if (exit.code !== 0) fail(describeExit(exit, plan.nodeRank), exitStatus(exit), 'local');
    },
  );

  store.get(ABORT_KEY, Infinity).then(
    (value) => {
      const notice = JSON.parse(Buffer.from(value).toString()) as { reason: string; status: number };
      fail(notice.reason, notice.status, 'remote');
    },
    () => {
      if (!finishing)
        fail(
          `lost the connection to the run's store at ${store.address} (node 0's launcher stopped, or the network failed)`,
          1,
          'remote',
        );
    },
  );
  store.get(STOP_KEY, Infinity).then(
    (value) => {
      const { signal, node } = JSON.parse(Buffer.from(value).toString()) as { signal: NodeJS.Signals; node: number };
      if (interrupts === 0 && node !== plan.nodeRank) interrupt(signal, `node ${node} got ${signal}`);
    },
    () => {}, // a lost store is the abort watch's to report
  );
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupts === 0 && plan.nnodes > 1)
      void store.set(STOP_KEY, JSON.stringify({ signal, node: plan.nodeRank })).catch(() => {});
    interrupt(signal, signal);
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of signals) process.on(s, onSignal);
  try {
    await ranks.finished;
    if (failure !== undefined) return failure;
    finishing = true;
    return await finishNode(store, plan, failedNotice);
  } finally {
    for (const s of signals) process.off(s, onSignal);
  }
}

/**
 * This node's ranks all succeeded. Node 0 hosts the store, so it waits until every node has reported the same (or
 * the run failed elsewhere) before it closes it; the other nodes report and leave.
 */
async function finishNode(store: StoreClient, plan: LaunchPlan, failedNotice: Promise<number>): Promise<number> {
  await store.set(`launch/done/${plan.nodeRank}`, '');
  if ((await store.add('launch/done', 1)) === plan.nnodes) await store.set('launch/all-done', '');
  if (plan.nodeRank !== 0) return 0;
  try {
    return await Promise.race([store.get('launch/all-done', plan.rdzvTimeoutMs).then(() => 0), failedNotice]);
  } catch (err) {
    if (!(err instanceof StoreError && err.kind === 'timeout')) throw err;
    const reported = await Promise.all(
      Array.from({ length: plan.nnodes }, (_, node) => store.check([`launch/done/${node}`])),
    );
    const silent = reported.flatMap((done, node) => (done ? [] : [node]));
    say(
      `node 0's ranks finished, but node(s) ${silent.join(', ')} did not report within ${plan.rdzvTimeoutMs / 1000} s; closing the store`,
    );
    return 1;
  }
}

/** Tells every launcher the run failed. Best effort: when the store is gone they find out by losing it too. */
async function publishAbort(store: StoreClient, reason: string, status: number): Promise<void> {
  await store.set(ABORT_KEY, JSON.stringify({ reason, status })).catch(() => {});
}

function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

function say(message: string): void {
  process.stderr.write(`nmoe launch: ${message}\n`);
}
