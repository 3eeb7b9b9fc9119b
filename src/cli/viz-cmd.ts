/**
 * `nmoe viz`: the dashboard (src/viz/server) over a metrics dir, the run registry and a data root, read-only and
 * live while runs train. Each location comes from its flag, else its environment variable (NMOE_METRICS_DIR,
 * NMOE_EXPERIMENTS_DB, NMOE_DATA_ROOT), else the config schema's default. Prints the URL; Ctrl-C stops it.
 */
import { existsSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import pc from 'picocolors';
import { FIELDS } from '../config/schema.ts';
import { Registry } from '../metrics/registry.ts';
import { UserError } from '../util/errors.ts';

interface VizFlags {
  metricsDir?: string;
  experimentsDb?: string;
  dataRoot?: string;
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
    .option(
      '--host <address>',
      'address to listen on; any other than loopback shows your runs and data to the network',
      '127.0.0.1',
    )
    .option('--port <n>', 'port to listen on (0: any free port)', port, 3000)
    .addHelpText(
      'after',
      '\nExamples:\n  nmoe viz --metrics-dir runs/metrics --experiments-db runs/experiments.db   # after `nmoe train` (tiny.toml)\n  nmoe viz --port 0',
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
      // Opened once here, so that a file that is not a registry fails now rather than on every page.
      if (existsSync(experimentsDb)) new Registry(experimentsDb, { readonly: true }).close();
      const { startVizServer } = await import('../viz/server/server.ts');
      const server = await startVizServer({ metricsDir, experimentsDb, dataRoot, host: flags.host, port: flags.port });
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
