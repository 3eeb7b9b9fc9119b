/**
 * `nmoe viz`: the dashboard (src/viz/server) over a metrics dir, the run registry and a data root, read-only and
 * live while runs train. Each location comes from its flag, else its environment variable (NMOE_METRICS_DIR,
 * NMOE_EXPERIMENTS_DB, NMOE_DATA_ROOT), else the config schema's default. With --mixture and --flow-profiles the
 * datasets page plans the data root's flows as `nmoe data flow show` does. Prints the URL; Ctrl-C stops it.
 */
import { existsSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import pc from 'picocolors';
import { FIELDS } from '../config/schema.ts';
import { DEFAULT_FLOW_SEQ_LEN } from '../data/flow/plan.ts';
import { readDataToml } from '../data/loader/mixture.ts';
import { Registry } from '../metrics/registry.ts';
import { UserError } from '../util/errors.ts';
import { numberOption } from './flags.ts';
import { count } from './prep-flags.ts';

interface VizFlags {
  metricsDir?: string;
  experimentsDb?: string;
  dataRoot?: string;
  mixture?: string;
  flowProfiles?: string;
  seqLen: number;
  activeParamsB?: number;
  host: string;
  port: number;
}

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new UserError(`--port ${v} is not a port. Fix: a whole number in 0..65535 (0 takes any free port).`);
  return n;
}

const stopped = () =>
  new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });

export function registerVizCommand(program: Command): void {
  program
    .command('viz')
    .description(
      'The dashboard: runs, losses, router health, GPUs, the run registry and token data in a browser, live while training.',
    )
    .option(
      '--metrics-dir <dir>',
      `per-run DuckDB metrics [env NMOE_METRICS_DIR, default ${FIELDS.metrics_dir.default}]`,
    )
    .option(
      '--experiments-db <file>',
      `the run registry (SQLite) [env NMOE_EXPERIMENTS_DB, default ${FIELDS.experiments_db.default}]`,
    )
    .option('--data-root <dir>', `token data to browse [env NMOE_DATA_ROOT, default ${FIELDS.data_root.default}]`)
    .option('--mixture <toml>', 'the mixture TOML of the flows under <data_root>/flows (with --flow-profiles)')
    .option('--flow-profiles <toml>', 'the flow profiles TOML ([flow.<name>]) of those flows (with --mixture)')
    .option(
      '--seq-len <n>',
      "the training config's seq_len, which the flows' quotas are counted in",
      count(1),
      DEFAULT_FLOW_SEQ_LEN,
    )
    .option(
      '--active-params-b <x>',
      "the training config's active_params_b, for flows that set tokens_b_ratio",
      numberOption('--active-params-b', 0, 1e6, 2),
    )
    .option(
      '--host <address>',
      'address to listen on; any other than loopback shows your runs and data to the network',
      '127.0.0.1',
    )
    .option('--port <n>', 'port to listen on (0: any free port)', port, 3000)
    .addHelpText(
      'after',
      '\nExamples:\n  nmoe viz --metrics-dir runs/metrics --experiments-db runs/experiments.db   # after `nmoe train` (tiny.toml)\n  nmoe viz --port 0\n  nmoe viz --data-root /data --mixture mix.toml --flow-profiles flows.toml --seq-len 4096   # flows on the datasets page',
    )
    .action(async (flags: VizFlags) => {
      const env = process.env;
      const metricsDir = flags.metricsDir ?? env.NMOE_METRICS_DIR ?? FIELDS.metrics_dir.default;
      const experimentsDb = flags.experimentsDb ?? env.NMOE_EXPERIMENTS_DB ?? FIELDS.experiments_db.default;
      const dataRoot = flags.dataRoot ?? env.NMOE_DATA_ROOT ?? FIELDS.data_root.default;
      if (!existsSync(metricsDir) || !statSync(metricsDir).isDirectory()) {
        throw new UserError(
          `the metrics dir ${metricsDir} does not exist. Fix: pass --metrics-dir (or set NMOE_METRICS_DIR) to the metrics_dir your runs write; configs/tiny.toml, the embedded default, writes runs/metrics.`,
        );
      }
      if ((flags.mixture === undefined) !== (flags.flowProfiles === undefined))
        throw new UserError(
          `--${flags.mixture === undefined ? 'flow-profiles' : 'mixture'} was given alone. Fix: give both --mixture <mixture.toml> and --flow-profiles <flow_profiles.toml>, or neither.`,
        );
      const flowTomls =
        flags.mixture !== undefined && flags.flowProfiles !== undefined
          ? {
              mixtureToml: flags.mixture,
              flowProfilesToml: flags.flowProfiles,
              seqLen: flags.seqLen,
              activeParamsB: flags.activeParamsB ?? null,
            }
          : undefined;
      // Read once here, so that a missing or malformed TOML fails now rather than on the datasets page.
      if (flowTomls) for (const toml of [flowTomls.mixtureToml, flowTomls.flowProfilesToml]) readDataToml(toml);
      // Opened once here, so that a file that is not a registry fails now rather than on every page.
      if (existsSync(experimentsDb)) new Registry(experimentsDb, { readonly: true }).close();
      const { startVizServer } = await import('../viz/server/server.ts');
      const server = await startVizServer({
        metricsDir,
        experimentsDb,
        dataRoot,
        flowTomls,
        host: flags.host,
        port: flags.port,
      });
      process.stdout.write(`${pc.bold('nmoe viz')} ${pc.cyan(server.url)}  (Ctrl-C stops it)\n`);
      process.stdout.write(
        pc.dim(
          `metrics ${metricsDir} | registry ${experimentsDb}${existsSync(experimentsDb) ? '' : ' (not there yet)'} | data ${dataRoot}${existsSync(dataRoot) ? '' : ' (not there)'}\n`,
        ),
      );
      await stopped();
      await server.close();
    });
}
