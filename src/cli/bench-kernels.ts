/**
 * `nmoe bench kernels [config] [--key=value ...]`: the grouped GEMMs, attention (causal and SWA) and cross-entropy
 * alone at a config's shapes (default configs/bench/moonlet6.toml), with ms and TFLOPS per kernel family.
 */
import type { Command } from 'commander';
import { benchKernels } from '../bench/kernel-bench.ts';
import { loadConfig } from '../config/load.ts';
import { modelConfig } from '../config/sections.ts';
import { selectBackend } from '../tensor/select.ts';
import { UserError } from '../util/errors.ts';

export const BENCH_CONFIG = new URL('../../configs/bench/moonlet6.toml', import.meta.url).pathname;

export function registerBenchKernels(bench: Command): void {
  bench
    .command('kernels')
    .description(
      "Time the grouped expert GEMMs, attention (causal, SWA) and cross-entropy at a config's shapes (default moonlet6).",
    )
    .argument('[config]', 'TOML config file', BENCH_CONFIG)
    .argument('[overrides...]', 'config overrides as --key=value')
    .option('--json', 'print the results as JSON')
    .allowUnknownOption()
    .action(async (path: string, overrides: string[], opts: { json?: boolean }) => {
      const { config } = loadConfig(path, { overrides });
      const { backend } = await selectBackend(config.device);
      if (backend.device !== 'cuda')
        throw new UserError(
          'bench kernels times GPU kernels, and no GPU is in use. Fix: run it on a machine with an NVIDIA GPU (see `nmoe doctor`).',
        );
      const { CudaBackend } = await import('../tensor/cuda/backend.ts');
      const dev = (backend as InstanceType<typeof CudaBackend>).dev;
      const timer = () => {
        const end = dev.startTiming();
        return () => end()();
      };
      const results = await benchKernels(backend, modelConfig(config), config.batch_size, timer);
      if (opts.json) {
        process.stdout.write(`${JSON.stringify({ device: backend.name, results })}\n`);
        return;
      }
      for (const r of results)
        process.stdout.write(
          `${r.kernel.padEnd(32)} ${r.ms.toFixed(3).padStart(9)} ms ${r.tflops.toFixed(1).padStart(7)} TFLOPS  ${r.shape}\n`,
        );
      process.stdout.write(`device: ${backend.name}\n`);
    });
}
