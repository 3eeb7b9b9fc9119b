/**
 * The run registry (inventory §9.2): SQLite with the reference's schema (`experiments`, `runs`), WAL journal
 * (DELETE where the filesystem refuses WAL) and a busy timeout, so `nmoe runs` and a dashboard can read while
 * training writes. Only rank 0 writes, and only at a run's start and end (never on the training hot path).
 *
 * A run's id is the trainer's run id; a resumed run keeps its id, so its row goes back to `running` and ends again
 * (the reference refuses a duplicate id). Each run's experiment row is created if missing, so `runs` never points
 * at a missing experiment (the reference never creates them).
 */
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { UserError } from '../util/errors.ts';
import { makeDirs } from '../util/dirs.ts';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS experiments (id TEXT PRIMARY KEY, name TEXT NOT NULL, project TEXT NOT NULL,
  description TEXT, created_at TEXT NOT NULL DEFAULT (datetime('now')));
CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, experiment_id TEXT NOT NULL, config_json TEXT NOT NULL,
  git_hash TEXT, git_dirty INTEGER DEFAULT 0, started_at TEXT NOT NULL DEFAULT (datetime('now')),
  ended_at TEXT, status TEXT NOT NULL DEFAULT 'running', results_json TEXT,
  FOREIGN KEY (experiment_id) REFERENCES experiments(id));
CREATE INDEX IF NOT EXISTS idx_runs_experiment ON runs(experiment_id);
CREATE INDEX IF NOT EXISTS idx_runs_status ON runs(status);
`;

export const RUN_STATUSES = ['running', 'completed', 'killed', 'failed'] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];

export interface RunRow {
  id: string;
  experiment_id: string;
  config_json: string;
  git_hash: string | null;
  git_dirty: number;
  started_at: string;
  ended_at: string | null;
  status: RunStatus;
  results_json: string | null;
}

export class Registry {
  readonly db: Database.Database;

  constructor(readonly path: string, opts: { readonly?: boolean } = {}) {
    try {
      if (!opts.readonly) makeDirs(dirname(path));
      this.db = new Database(path, { readonly: !!opts.readonly, fileMustExist: !!opts.readonly, timeout: 30_000 });
      this.db.pragma('busy_timeout = 5000');
      if (opts.readonly) return;
      if (this.db.pragma('journal_mode = WAL', { simple: true }) !== 'wal') this.db.pragma('journal_mode = DELETE');
      this.db.exec(SCHEMA);
    } catch (err) {
      const msg = (err as Error).message;
      const fix = /locking protocol/i.test(msg)
        ? 'the filesystem has no file locks (NFS?): put experiments_db on a local disk'
        : 'check experiments_db in the config and that its directory is writable';
      throw new UserError(`cannot open the experiments DB ${path}: ${msg}. Fix: ${fix}.`);
    }
  }

  startRun(run: { id: string; experimentId: string; config: unknown; gitHash: string | null; gitDirty: boolean | null }): void {
    this.db.prepare(`INSERT OR IGNORE INTO experiments (id, name, project) VALUES (?, ?, 'nmoe')`).run(run.experimentId, run.experimentId);
    this.db.prepare(
      `INSERT INTO runs (id, experiment_id, config_json, git_hash, git_dirty, status) VALUES (?, ?, ?, ?, ?, 'running')
       ON CONFLICT(id) DO UPDATE SET config_json = excluded.config_json, git_hash = excluded.git_hash,
         git_dirty = excluded.git_dirty, status = 'running', ended_at = NULL, results_json = NULL`,
    ).run(run.id, run.experimentId, JSON.stringify(run.config), run.gitHash, run.gitDirty ? 1 : 0);
  }

  endRun(id: string, status: Exclude<RunStatus, 'running'>, results: Record<string, unknown>): void {
    this.db.prepare(`UPDATE runs SET status = ?, ended_at = datetime('now'), results_json = ? WHERE id = ?`).run(status, JSON.stringify(results), id);
  }

  listRuns(filter: { experimentId?: string; status?: string } = {}): RunRow[] {
    return this.db.prepare(
      `SELECT * FROM runs WHERE (@e IS NULL OR experiment_id = @e) AND (@s IS NULL OR status = @s) ORDER BY started_at DESC, id DESC`,
    ).all({ e: filter.experimentId ?? null, s: filter.status ?? null }) as RunRow[];
  }

  getRun(id: string): RunRow | undefined {
    return this.db.prepare('SELECT * FROM runs WHERE id = ?').get(id) as RunRow | undefined;
  }

  close(): void {
    this.db.close();
  }
}
