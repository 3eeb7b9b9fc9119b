/**
 * `nmoe runs list|show`: the run registry (experiments DB, SQLite) in the terminal. Opens the database read-only,
 * so it never blocks a training run that is writing it.
 */
import type { Command } from 'commander';
import pc from 'picocolors';
import { existsSync } from 'node:fs';
import { RUN_STATUSES, type RunRow, type RunStatus, Registry } from '../metrics/registry.ts';
import { UserError } from '../util/errors.ts';

const DEFAULT_DB = 'runs/experiments.db';

function open(db: string): Registry {
  if (!existsSync(db))
    throw new UserError(
      `no experiments DB at ${db}. Fix: pass --db with the experiments_db of your config (default for tiny.toml: ${DEFAULT_DB}).`,
    );
  return new Registry(db, { readonly: true });
}

const STATUS_COLOR: Record<string, (s: string) => string> = {
  completed: pc.green,
  running: pc.cyan,
  killed: pc.yellow,
  failed: pc.red,
  stale: pc.red,
};

function summary(r: RunRow): string {
  const res = r.results_json ? (JSON.parse(r.results_json) as Record<string, unknown>) : {};
  const loss = typeof res.final_loss === 'number' ? `loss ${res.final_loss.toFixed(4)}` : '';
  const steps = typeof res.steps_completed === 'number' ? `${res.steps_completed} steps` : '';
  const err = typeof res.error === 'string' ? res.error.slice(0, 60) : '';
  return [loss, steps, err].filter(Boolean).join(', ');
}

export function registerRunsCommand(program: Command): void {
  const runs = program.command('runs').description('Training runs recorded in the experiments DB (SQLite).');
  runs
    .command('list')
    .description('One line per run, newest first: id, experiment, status, start, end, result.')
    .option('--db <path>', "experiments DB (the config's experiments_db)", DEFAULT_DB)
    .option('--experiment <id>', 'only this experiment')
    .option('--status <status>', `only runs with this status (${RUN_STATUSES.join(', ')})`)
    .action((opts: { db: string; experiment?: string; status?: string }) => {
      if (opts.status !== undefined && !RUN_STATUSES.includes(opts.status as RunStatus)) {
        throw new UserError(
          `--status ${JSON.stringify(opts.status)} is not a run status. Fix: one of ${RUN_STATUSES.join(', ')}.`,
        );
      }
      const reg = open(opts.db);
      const rows = reg.listRuns({
        ...(opts.experiment ? { experimentId: opts.experiment } : {}),
        ...(opts.status ? { status: opts.status } : {}),
      });
      reg.close();
      if (!rows.length) process.stdout.write('no runs\n');
      for (const r of rows) {
        const status = (STATUS_COLOR[r.status] ?? ((s: string) => s))(r.status.padEnd(9));
        process.stdout.write(
          `${r.id}  ${r.experiment_id}  ${status}  ${r.started_at}  ${r.ended_at ?? '-'.padEnd(19)}  ${summary(r)}\n`,
        );
      }
    });
  runs
    .command('show')
    .description('Everything recorded about one run: status, times, git, results and the full config.')
    .argument('<id>', 'run id (see nmoe runs list)')
    .option('--db <path>', "experiments DB (the config's experiments_db)", DEFAULT_DB)
    .action((id: string, opts: { db: string }) => {
      const reg = open(opts.db);
      const r = reg.getRun(id);
      reg.close();
      if (!r)
        throw new UserError(`no run ${id} in ${opts.db}. Fix: pick an id from \`nmoe runs list --db ${opts.db}\`.`);
      const lines = [
        `run         ${r.id}`,
        `experiment  ${r.experiment_id}`,
        `status      ${r.status}`,
        `started     ${r.started_at} UTC`,
        `ended       ${r.ended_at ? `${r.ended_at} UTC` : '-'}`,
        `trainer     ${r.pid === null ? '-' : `pid ${r.pid} on ${r.host}, last heartbeat ${r.heartbeat_at} UTC${r.status === 'stale' ? ' (gone: the run was killed without ending its row)' : ''}`}`,
        `git         ${r.git_hash ?? 'unknown'}${r.git_dirty ? ' (dirty)' : ''}`,
        `results     ${r.results_json ?? '-'}`,
        'config',
        ...JSON.stringify(JSON.parse(r.config_json), null, 2)
          .split('\n')
          .map((l) => `  ${l}`),
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}
