/**
 * The run registry (SQLite, metrics/registry.ts) for the dashboard: opened read-only for each request and closed
 * again, so the server never holds the file and always sees the trainer's latest commit. A registry that does
 * not exist (yet) reads as empty; one that cannot be opened is an error naming the file.
 */
import { existsSync } from 'node:fs';
import type { ExperimentSummary } from '../api.ts';
import { Registry, type RunRow } from '../../metrics/registry.ts';

export class RegistryReader {
  constructor(readonly path: string) {}

  #read<T>(empty: T, read: (reg: Registry) => T): T {
    if (!existsSync(this.path)) return empty;
    const reg = new Registry(this.path, { readonly: true });
    try {
      return read(reg);
    } finally {
      reg.close();
    }
  }

  /** Newest first, optionally one experiment's. */
  runs(experimentId: string | null = null): RunRow[] {
    return this.#read([], (reg) => reg.listRuns(experimentId === null ? {} : { experimentId }));
  }

  run(id: string): RunRow | undefined {
    return this.#read(undefined, (reg) => reg.getRun(id));
  }

  /** The run's config as recorded at its start, or null for a run the registry does not know. */
  config(id: string): Record<string, unknown> | null {
    const row = this.run(id);
    return row ? (JSON.parse(row.config_json) as Record<string, unknown>) : null;
  }

  /** Every experiment with its run counts by status and its newest run's start, most recently active first. */
  experiments(): ExperimentSummary[] {
    return this.#read([], (reg) => {
      const experiments = reg.db
        .prepare(
          `SELECT e.id, e.name, e.project, e.description, e.created_at, count(r.id) AS runs, max(r.started_at) AS last_started_at
         FROM experiments e LEFT JOIN runs r ON r.experiment_id = e.id
         GROUP BY e.id ORDER BY last_started_at IS NULL, last_started_at DESC, e.id`,
        )
        .all() as Omit<ExperimentSummary, 'by_status'>[];
      const counts = reg.statusCounts();
      return experiments.map((e) => ({
        ...e,
        by_status: Object.fromEntries(counts.filter((c) => c.experiment_id === e.id).map((c) => [c.status, c.n])),
      }));
    });
  }
}
