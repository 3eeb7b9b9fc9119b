/**
 * The run registry, as the reference's nmoe/experiments.py keeps it: SQLite with its schema (`experiments`, `runs`),
 * WAL journal (DELETE where the filesystem refuses WAL) and a busy timeout, so `nmoe runs` and a dashboard can read
 * while training writes. Only rank 0 writes, and only at a run's start and end (never on the training hot path).
 *
 * A run's id is the trainer's run id; a resumed run keeps its id, so its row goes back to `running` and ends again
 * (the reference refuses a duplicate id). Each run's experiment row is created if missing, so `runs` never points
 * at a missing experiment (the reference never creates them).
 *
 * A run killed with SIGKILL (or whose machine died) never ends its row, so nmoe adds three columns to the
 * reference's `runs` table: the trainer's `pid` and `host`, and `heartbeat_at`, renewed every HEARTBEAT_S while it
 * trains. A `running` row reads as `stale` when its trainer is gone: on this host, when its pid no longer exists;
 * elsewhere, when its heartbeat is older than STALE_AFTER_S. `stale` is never stored: a trainer that was only slow
 * reads as `running` again at its next heartbeat.
 */
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { UserError } from '../util/errors.ts';
import { HOST, pidAlive } from '../util/host.ts';
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

export const RUN_STATUSES = ['running', 'completed', 'killed', 'failed', 'stale'] as const;
export type RunStatus = (typeof RUN_STATUSES)[number];

export const HEARTBEAT_S = 30;
export const STALE_AFTER_S = 600;
const ADDED_COLUMNS = { pid: 'INTEGER', host: 'TEXT', heartbeat_at: 'TEXT' } as const;

/** A row's status as it stands now (see above): `running` becomes `stale` when its trainer is gone. */
export function liveStatus(
  status: string,
  pid: number | null,
  host: string | null,
  heartbeatAt: string | null,
  now = Date.now(),
): string {
  if (status !== 'running' || pid === null || host === null) return status; // the reference's rows carry no pid
  if (host === HOST) return pidAlive(pid) ? status : 'stale';
  return heartbeatAt !== null && now - Date.parse(`${heartbeatAt}Z`) > STALE_AFTER_S * 1000 ? 'stale' : status;
}

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
  pid: number | null;
  host: string | null;
  heartbeat_at: string | null;
}

export class Registry {
  readonly db: Database.Database;
  /** The runs columns, `status` as liveStatus says, NULL for nmoe's columns in a file from before them. */
  #select = '';

  constructor(
    readonly path: string,
    opts: { readonly?: boolean } = {},
  ) {
    try {
      if (!opts.readonly) makeDirs(dirname(path));
      this.db = new Database(path, { readonly: !!opts.readonly, fileMustExist: !!opts.readonly, timeout: 30_000 });
      this.db.pragma('busy_timeout = 5000');
      if (!opts.readonly) {
        if (this.db.pragma('journal_mode = WAL', { simple: true }) !== 'wal') this.db.pragma('journal_mode = DELETE');
        this.db.exec(SCHEMA);
      }
      const have = new Set((this.db.pragma('table_info(runs)') as { name: string }[]).map((c) => c.name));
      if (have.size === 0) throw new Error('it has no runs table (not an experiments DB)');
      const missing = Object.keys(ADDED_COLUMNS).filter((c) => !have.has(c));
      if (!opts.readonly)
        for (const c of missing)
          this.db.exec(`ALTER TABLE runs ADD COLUMN ${c} ${ADDED_COLUMNS[c as keyof typeof ADDED_COLUMNS]}`);
      // A reader cannot add them to a file from before them: it reads them as NULL.
      const runs =
        opts.readonly && missing.length
          ? `(SELECT *, ${missing.map((c) => `NULL AS ${c}`).join(', ')} FROM runs)`
          : 'runs';
      this.db.function('nmoe_live_status', { deterministic: false }, (status, pid, host, hb) =>
        liveStatus(status as string, pid as number | null, host as string | null, hb as string | null),
      );
      this.#select = `SELECT id, experiment_id, config_json, git_hash, git_dirty, started_at, ended_at, results_json, pid, host, heartbeat_at,
        nmoe_live_status(status, pid, host, heartbeat_at) AS status FROM ${runs}`;
    } catch (err) {
      const msg = (err as Error).message;
      const fix = /locking protocol/i.test(msg)
        ? 'the filesystem has no file locks (NFS?): put experiments_db on a local disk'
        : /not a database|no runs table/.test(msg)
          ? 'point it at the SQLite file `nmoe train` writes (experiments_db in the config; --db or --experiments-db here)'
          : 'check experiments_db in the config and that its directory is writable';
      throw new UserError(`cannot open the experiments DB ${path}: ${msg}. Fix: ${fix}.`);
    }
  }

  startRun(run: {
    id: string;
    experimentId: string;
    config: unknown;
    gitHash: string | null;
    gitDirty: boolean | null;
  }): void {
    this.db
      .prepare(`INSERT OR IGNORE INTO experiments (id, name, project) VALUES (?, ?, 'nmoe')`)
      .run(run.experimentId, run.experimentId);
    this.db
      .prepare(
        `INSERT INTO runs (id, experiment_id, config_json, git_hash, git_dirty, status, pid, host, heartbeat_at)
       VALUES (?, ?, ?, ?, ?, 'running', ?, ?, datetime('now'))
       ON CONFLICT(id) DO UPDATE SET config_json = excluded.config_json, git_hash = excluded.git_hash, git_dirty = excluded.git_dirty,
         status = 'running', ended_at = NULL, results_json = NULL, pid = excluded.pid, host = excluded.host, heartbeat_at = excluded.heartbeat_at`,
      )
      .run(run.id, run.experimentId, JSON.stringify(run.config), run.gitHash, run.gitDirty ? 1 : 0, process.pid, HOST);
  }

  /** The trainer of run `id` is alive: every HEARTBEAT_S while it trains. */
  heartbeat(id: string): void {
    this.db.prepare(`UPDATE runs SET heartbeat_at = datetime('now') WHERE id = ?`).run(id);
  }

  endRun(id: string, status: Exclude<RunStatus, 'running' | 'stale'>, results: Record<string, unknown>): void {
    this.db
      .prepare(`UPDATE runs SET status = ?, ended_at = datetime('now'), results_json = ? WHERE id = ?`)
      .run(status, JSON.stringify(results), id);
  }

  /** Newest first; `status` filters on the status as it reads now (so `stale` finds the runs whose trainer is gone). */
  listRuns(filter: { experimentId?: string; status?: string } = {}): RunRow[] {
    return this.db
      .prepare(
        `SELECT * FROM (${this.#select}) WHERE (@e IS NULL OR experiment_id = @e) AND (@s IS NULL OR status = @s) ORDER BY started_at DESC, id DESC`,
      )
      .all({ e: filter.experimentId ?? null, s: filter.status ?? null }) as RunRow[];
  }

  getRun(id: string): RunRow | undefined {
    return this.db.prepare(`SELECT * FROM (${this.#select}) WHERE id = ?`).get(id) as RunRow | undefined;
  }

  /** Run counts by status (as it reads now) per experiment. */
  statusCounts(): { experiment_id: string; status: string; n: number }[] {
    return this.db
      .prepare(`SELECT experiment_id, status, count(*) AS n FROM (${this.#select}) GROUP BY experiment_id, status`)
      .all() as { experiment_id: string; status: string; n: number }[];
  }

  close(): void {
    this.db.close();
  }
}
