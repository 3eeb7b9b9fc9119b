/**
 * `nmoe launch --nproc-per-node N [--nnodes M --node-rank R --master-addr A --master-port P] [--entry module]
 * [train args… | eval|generate args…]`: one process per GPU, torchrun's way (the launcher itself is src/launch/launch.ts). This file turns
 * the flags into a checked plan and the launcher's status into the exit code.
 */
import { wholeFlag } from './flags.ts';
import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { DEFAULT_MASTER_PORT, inSlurmBatchScript } from '../comm/env.ts';
import { type LaunchPlan, TERM_GRACE_MS, launch, rankCommand } from '../launch/launch.ts';
import { rendezvousTimeoutMs } from '../comm/rendezvous.ts';
import { UserError } from '../util/errors.ts';

export interface LaunchFlags {
  nprocPerNode?: string;
  nnodes: string;
  nodeRank: string;
  masterAddr?: string;
  masterPort: string;
  entry?: string;
}

/** The launcher's exit status when it is not 0; the launcher has already said why. */
export class LaunchFailed extends Error {
  override name = 'LaunchFailed';

  constructor(readonly exitCode: number) {
    super(`nmoe launch exits with status ${exitCode}`);
  }
}

export function parseLaunchFlags(
  flags: LaunchFlags,
  args: string[],
  env: Record<string, string | undefined> = process.env,
): LaunchPlan {
  if (flags.nprocPerNode === undefined) {
    throw new UserError(
      '--nproc-per-node is required: how many processes (one per GPU) to run on this node. Fix: e.g. --nproc-per-node 8.',
    );
  }
  const nprocPerNode = wholeFlag('--nproc-per-node', flags.nprocPerNode, 1, 'e.g. --nproc-per-node 8, one per GPU');
  const nnodes = wholeFlag('--nnodes', flags.nnodes, 1, 'e.g. --nnodes 2');
  const nodeRank = wholeFlag('--node-rank', flags.nodeRank, 0, 'e.g. --node-rank 0 on the first node');
  if (nodeRank >= nnodes)
    throw new UserError(
      `--node-rank ${nodeRank} must be < --nnodes (${nnodes}). Fix: number the nodes from 0 to ${nnodes - 1}.`,
    );
  const masterPort = wholeFlag('--master-port', flags.masterPort, 0, `e.g. --master-port ${DEFAULT_MASTER_PORT}`);
  if (masterPort > 65535)
    throw new UserError(
      `--master-port ${masterPort} is not a TCP port. Fix: use one from 1024 to 65535, e.g. --master-port ${DEFAULT_MASTER_PORT}.`,
    );
  if (masterPort === 0 && nnodes > 1) {
    throw new UserError(
      `--master-port 0 (any free port) works only with --nnodes 1: the other nodes must know the port. Fix: choose one, e.g. --master-port ${DEFAULT_MASTER_PORT}.`,
    );
  }
  if (nnodes > 1 && !flags.masterAddr) {
    throw new UserError(
      `--master-addr is required with --nnodes ${nnodes}. Fix: give node 0's address as the other nodes reach it, e.g. --master-addr 10.0.0.1.`,
    );
  }
  if (nnodes > 1 && inSlurmBatchScript(env)) {
    throw new UserError(
      `--nnodes ${nnodes} in the batch script of Slurm job ${env.SLURM_JOB_ID ?? '?'}, not under srun: this one launcher would wait out the rendezvous for the other nodes' launchers, which nothing starts. ` +
        'Fix: start one launcher per node: srun --ntasks-per-node=1 nmoe launch --nnodes $SLURM_JOB_NUM_NODES ….',
    );
  }
  if (flags.entry !== undefined && !existsSync(flags.entry)) {
    throw new UserError(
      `--entry ${flags.entry} does not exist. Fix: give the path of a JS or TS module to run on every rank.`,
    );
  }
  return {
    nprocPerNode,
    nnodes,
    nodeRank,
    masterAddr: flags.masterAddr || '127.0.0.1',
    masterPort,
    command: rankCommand(flags.entry, args),
    rdzvTimeoutMs: rendezvousTimeoutMs(),
  };
}

const HELP = `
Each rank gets torchrun's environment: RANK = node_rank * nproc_per_node + local_rank,
WORLD_SIZE = nnodes * nproc_per_node, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, and
NMOE_LAUNCH_STORE=1. Ranks pick their GPU by LOCAL_RANK; CUDA_VISIBLE_DEVICES passes through unchanged.
Node 0's launcher hosts the rendezvous store at --master-port. NMOE_RDZV_TIMEOUT_S (default 300) bounds
every wait for the store and for the other ranks and nodes.

Output: rank 0 has the terminal (its progress bar works); other ranks' lines are prefixed "[rank N] ".

Teardown: when a rank exits non-zero or is killed by a signal, every rank on every node gets SIGTERM, then
SIGKILL ${TERM_GRACE_MS / 1000} s later, and the launchers exit with that rank's status (128 + the signal's number for a
signal). A node that loses the store stops its ranks and exits 1. Ctrl-C, SIGTERM or SIGHUP is forwarded to
the ranks of every node (they save a checkpoint and stop); a second one kills them.

Exit codes: 0 every rank succeeded; 2 a problem with the flags, the environment or the nodes' agreement;
1 the store was lost or a node never reported; otherwise the failing rank's status.

Examples:
  nmoe launch --nproc-per-node 8 configs/moonlight.toml --steps=1000
  nmoe launch --nproc-per-node 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 configs/moonlight.toml
  nmoe launch --nproc-per-node 8 --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 configs/moonlight.toml
  nmoe launch --nproc-per-node 8 --nnodes 2 --node-rank $JOB_COMPLETION_INDEX --master-addr nmoe-dist-0.nmoe-dist ...
  nmoe launch --nproc-per-node 2 -- eval runs/x/checkpoints --tasks core --device cpu
  nmoe launch --nproc-per-node 2 --entry my-script.ts -- --my-flag`;

export function registerLaunchCommand(program: Command): void {
  program
    .command('launch')
    .description(
      'Run one training (or eval, generate) process per GPU on this node (torchrun-style), across one or more nodes.',
    )
    .option('--nproc-per-node <n>', 'processes (GPUs) on this node; required')
    .option('--nnodes <m>', 'number of nodes', '1')
    .option('--node-rank <r>', "this node's rank, 0 to nnodes-1", '0')
    .option('--master-addr <addr>', "node 0's address as every node reaches it (required with --nnodes > 1)")
    .option(
      '--master-port <port>',
      "the store's port on node 0 (0: any free port, one node only)",
      String(DEFAULT_MASTER_PORT),
    )
    .option('--entry <module>', 'run this JS/TS module on every rank instead of `nmoe train`')
    .argument(
      '[args...]',
      'arguments for `nmoe train` (config file, --key=value overrides), `eval …` or `generate …` for those commands, or arguments for --entry',
    )
    .allowUnknownOption()
    .helpOption('-h, --help', 'show help')
    .addHelpText('after', HELP)
    .action(async (args: string[], flags: LaunchFlags) => {
      const status = await launch(parseLaunchFlags(flags, args));
      if (status !== 0) throw new LaunchFailed(status);
    });
}
