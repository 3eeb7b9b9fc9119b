/**
 * `nmoe bench train <config> [--steps N] [--warmup W] [--profile] [--json] [--key=value ...]`: times training steps
 * of a config on this machine's backend and prints one summary line (see src/bench/train-bench.ts). Under
 * `nmoe launch` the ranks split the global batch as in training, and rank 0 prints the result for all of them.
 */
import { wholeOption } from './flags.ts';
import type { Command } from 'commander';
import { loadConfig } from '../config/load.ts';
import { benchTrain, type BenchResult, refuseCpuFallback } from '../bench/train-bench.ts';
import { readDistEnv } from '../comm/env.ts';
import { modelShape } from '../comm/parallel.ts';
import { openSession } from '../comm/session.ts';
import { parallelConfig } from '../config/sections.ts';
import { deviceClock } from '../tensor/clock.ts';
import { UserError } from '../util/errors.ts';
import { formatCount } from './progress.ts';

function summary(r: BenchResult): string {
  const mfu = r.mfu === null ? 'MFU n/a (unknown peak)' : `MFU ${(100 * r.mfu).toFixed(1)}%`;
  const mem =
    r.peakMemoryGiB === null
      ? 'peak memory n/a'
      : `peak memory ${r.peakMemoryGiB.toFixed(2)} GiB (${r.reservedGiB!.toFixed(2)} reserved, ${r.timedDriverAllocs} cuMemAlloc while timed)`;
  const gpus = r.world > 1 ? ` x ${r.world} (${formatCount(r.tokensPerSecond / r.world)} tokens/s per rank)` : '';
  return `${r.device}${gpus}: ${formatCount(r.tokensPerSecond)} tokens/s | ${r.msPerStep.toFixed(1)} ms/step | ${r.tflops >= 1 ? r.tflops.toFixed(1) : r.tflops.toPrecision(3)} TFLOPS | ${mfu} | ${mem} | ${r.steps} steps of ${formatCount(r.tokensPerStep)} tokens, loss ${r.finalLoss.toFixed(3)}`;
}

export function registerBenchTrain(bench: Command): void {
  bench
    .command('train')
    .description(
      'Time training steps of a config (random tokens) and print tokens/s, ms/step, TFLOPS, MFU and peak memory.',
    )
    .argument('<config>', 'TOML config file, e.g. configs/bench/moonlet6.toml')
    .argument('[overrides...]', 'config overrides as --key=value')
    .option('--steps <n>', 'timed steps', wholeOption('--steps', 1), 10)
    .option('--warmup <n>', 'untimed steps first (kernel compiles, allocator warm-up)', wholeOption('--warmup', 0), 3)
    .option('--profile', 'also report the time per op kind')
    .option('--json', 'print the result as JSON')
    .allowUnknownOption()
    .action(
      async (
        path: string,
        overrides: string[],
        opts: { steps: number; warmup: number; profile?: boolean; json?: boolean },
      ) => {
        const { config } = loadConfig(path, { overrides });
        const env = readDistEnv();
        const { backend, dist } = await openSession(config, env, {
          shape: modelShape(parallelConfig(config), env.worldSize),
          beforeJoin: ({ note, fallback }) => {
            const refused = fallback && refuseCpuFallback(config, fallback, opts.steps + opts.warmup);
            if (refused) throw new UserError(refused);
            if (note && env.rank === 0) process.stderr.write(`${note}\n`); // why "auto" is not timing a GPU
          },
        });
        const clock = await deviceClock(backend);
        const r = await benchTrain(
          config,
          backend,
          { steps: opts.steps, warmup: opts.warmup, profile: !!opts.profile, clock },
          dist,
        );
        await dist?.close();
        if (env.rank !== 0) return; // rank 0 speaks for the run
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(r)}\n`);
          return;
        }
        if (r.profile) {
          // Each op's time runs from its first kernel's start to its last kernel's end on the stream, so what the
          // rows leave of the step is time the GPU sat between ops, waiting for the host.
          const row = (op: string, ms: number, calls: string) =>
            process.stdout.write(
              `${op.padEnd(26)} ${ms.toFixed(2).padStart(9)} ms/step ${((100 * ms) / r.msPerStep).toFixed(1).padStart(5)}%  ${calls}\n`,
            );
          for (const p of r.profile) row(p.op, p.ms / r.steps, `${String(p.calls / r.steps).padStart(5)} calls/step`);
          const inOps = r.profile.reduce((s, p) => s + p.ms, 0) / r.steps;
          row('(between ops: GPU idle)', r.msPerStep - inOps, '');
          row('step', r.msPerStep, '');
        }
        process.stdout.write(`${summary(r)}\n`);
      },
    );
}
