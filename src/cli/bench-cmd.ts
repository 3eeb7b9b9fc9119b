/**
 * `nmoe bench ...`: measurements a user can repeat on their own machine. Each subcommand lives in its own file
 * and registers itself; adding one is one line in SUBCOMMANDS.
 */
import type { Command } from 'commander';
import { registerBenchData } from './bench-data.ts';
import { registerBenchKernels } from './bench-kernels.ts';
import { registerBenchRdep } from './bench-rdep.ts';
import { registerBenchTrain } from './bench-train.ts';
import { registerBenchViz } from './bench-viz.ts';

const SUBCOMMANDS: ((bench: Command) => void)[] = [
  registerBenchData,
  registerBenchTrain,
  registerBenchKernels,
  registerBenchRdep,
  registerBenchViz,
];

export function registerBenchCommand(program: Command): void {
  const bench = program
    .command('bench')
    .description('Measure nmoe on this machine (data pipeline, training, dashboard).');
  for (const register of SUBCOMMANDS) register(bench);
}
