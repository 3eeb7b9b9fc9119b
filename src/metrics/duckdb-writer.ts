/**
 * The reference's metrics store: one DuckDB file per rank (no two writers share a file),
 * `{metrics_dir}/{run}/rank_{r}.duckdb`, one table `metrics(run, tag, step, ts_ms, value)` keyed by (run, tag, step),
 * rows upserted with INSERT OR REPLACE (so steps replayed after a resume overwrite, never duplicate).
 *
 * Readable while training. DuckDB lets one process hold a file for writing, and a writer and a reader exclude each
 * other (`Could not set lock on file ... Conflicting lock is held in <program> (PID n)`). So the writer never holds
 * its file between writes: `record` buffers rows in memory and `flush` starts a background write unless one is
 * running. A write is one call into DuckDB, run off the main thread: an in-memory database attaches the file,
 * inserts every row buffered so far in one transaction, checkpoints (the WAL goes into the file, so a reader needs
 * nothing else) and detaches it. Being one call, it holds the file only as long as DuckDB works, never waiting for
 * the training loop to yield. Rows buffered while a write is in flight go into the next one: one write at a time,
 * so rows land in the order they were recorded. A write starts at least WRITE_GAP_MS after the previous one ended,
 * so that even a run that logs every step leaves readers most of the time to get in. When a reader (the
 * dashboard) holds the file, the attach fails; the rows stay buffered and the write retries with backoff. The
 * training loop never waits: `record` and `flush` return at once. `close` keeps retrying for `closeTimeoutMs`
 * (60 s), then throws an error naming the file and the process that holds it.
 *
 * Cost, measured on the 2-core CI machine (Intel Xeon, DuckDB 1.5.6, otherwise idle): a write of one log step takes
 * 15 ms (50 rows) to 20 ms (200 rows), median, inside DuckDB; the main thread only builds the statement (over 60
 * writes its event loop was delayed 1.4 ms at p99). Opening the file with a DuckDB instance of its own for each write
 * took 33-43 ms instead, 3-8 ms of them on the main thread, and held the file across the training loop's steps
 * while each of its calls waited for the loop to yield.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DuckDBConnection, DuckDBInstance } from '@duckdb/node-api';
import { UserError } from '../util/errors.ts';
import { makeDirs } from '../util/dirs.ts';

/** The reference's table; `name` may be qualified by the database it lives in. */
export const metricsDdl = (name = 'metrics'): string => `CREATE TABLE IF NOT EXISTS ${name} (
  run TEXT NOT NULL, tag TEXT NOT NULL, step INTEGER NOT NULL,
  ts_ms BIGINT NOT NULL, value DOUBLE NOT NULL,
  PRIMARY KEY (run, tag, step))`;

/** Rows per INSERT statement. */
const CHUNK = 1000;
const RETRY_FIRST_MS = 20;
const RETRY_MAX_MS = 1000;
const WRITE_GAP_MS = 250;
/** The name the file is attached under while a write runs. */
const DB = 'nmoe_metrics';

export const metricsPath = (dir: string, run: string, rank: number): string => join(dir, run, `rank_${rank}.duckdb`);

/** DuckDB's error for a file another process holds (a writer excludes readers, and readers exclude a writer). */
export function isLockError(err: unknown): boolean {
  return /Could not set lock on file/i.test((err as Error)?.message ?? '');
}

/** The program and PID that hold the lock, from DuckDB's lock error: "/usr/bin/node (PID 1234)". */
export function lockHolder(err: unknown): string {
  return /Conflicting lock is held in (.+? \(PID \d+\))/.exec((err as Error)?.message ?? '')?.[1] ?? 'another process';
}

export const sqlString = (s: string): string => `'${s.replace(/'/g, "''")}'`;

type Row = [tag: string, step: number, tsMs: number, value: number];

export class MetricsWriter {
  #rows: Row[] = [];
  #writing: Promise<void> | null = null;
  #closeDeadline = Infinity;
  #lastWriteEnd = -Infinity;
  #error: Error | null = null;

  private constructor(
    readonly run: string,
    readonly path: string,
    private readonly instance: DuckDBInstance,
    private readonly conn: DuckDBConnection,
    private readonly closeTimeoutMs: number,
  ) {}

  static async open(
    dir: string,
    run: string,
    rank: number,
    opts: { closeTimeoutMs?: number } = {},
  ): Promise<MetricsWriter> {
    makeDirs(join(dir, run));
    // Loaded on first use: commands that write no metrics never load DuckDB's native library.
    const { DuckDBInstance } = await import('@duckdb/node-api');
    const instance = await DuckDBInstance.create(':memory:');
    return new MetricsWriter(
      run,
      metricsPath(dir, run, rank),
      instance,
      await instance.connect(),
      opts.closeTimeoutMs ?? 60_000,
    );
  }

  /** Buffers one value per tag for `step`; non-finite values are left out (the column is NOT NULL DOUBLE). */
  record(step: number, values: Record<string, number>, tsMs = Date.now()): void {
    for (const [tag, value] of Object.entries(values))
      if (Number.isFinite(value)) this.#rows.push([tag, step, tsMs, value]);
  }

  /**
   * Starts writing the buffered rows in the background unless a write is running (it takes them next). The promise
   * resolves once the buffer has drained, or the writer has failed (close() reports why); it never rejects, so the
   * training loop can ignore it.
   */
  flush(): Promise<void> {
    if (!this.#writing && this.#rows.length && !this.#error) this.#writing = this.#drain();
    return this.#writing ?? Promise.resolve();
  }

  async #drain(): Promise<void> {
    let delay = RETRY_FIRST_MS;
    try {
      // The loop test and the `finally` below run in one synchronous stretch, so a row recorded after the last
      // test finds #writing null and its flush starts a new drain.
      while (this.#rows.length) {
        const gap = this.#lastWriteEnd + WRITE_GAP_MS - performance.now();
        if (gap > 0) await sleep(gap);
        const n = this.#rows.length;
        try {
          await this.#write(this.#rows.slice(0, n));
          this.#rows.splice(0, n);
          this.#lastWriteEnd = performance.now();
          delay = RETRY_FIRST_MS;
        } catch (err) {
          if (!isLockError(err)) throw err;
          if (Date.now() >= this.#closeDeadline) throw this.#lockedError(err);
          await sleep(delay);
          delay = Math.min(2 * delay, RETRY_MAX_MS);
        }
      }
    } catch (err) {
      this.#error =
        err instanceof UserError
          ? err
          : new Error(`metrics write to ${this.path} failed: ${(err as Error)?.message ?? String(err)}`);
      this.#rows = [];
    } finally {
      this.#writing = null;
    }
  }

  async #write(buffered: Row[]): Promise<void> {
    // One write may carry a (tag, step) twice (a step recorded again); within one INSERT DuckDB keeps the first
    // row, and the newest must win, as it does across writes.
    const rows = [...new Map(buffered.map((r) => [`${r[0]}\0${r[1]}`, r])).values()];
    const run = sqlString(this.run);
    const inserts: string[] = [];
    for (let i = 0; i < rows.length; i += CHUNK) {
      // toExponential() gives the shortest digits that read back as the same double, and DuckDB reads a literal
      // with an exponent as a DOUBLE (without one, as a DECIMAL, which could round).
      const values = rows
        .slice(i, i + CHUNK)
        .map(([tag, step, ts, value]) => `(${run}, ${sqlString(tag)}, ${step}, ${ts}, ${value.toExponential()})`);
      inserts.push(`INSERT OR REPLACE INTO ${DB}.metrics (run, tag, step, ts_ms, value) VALUES ${values.join(', ')}`);
    }
    // Without parameters, the statements run as one call (duckdb_query): the file is attached and detached again
    // without coming back to this thread in between.
    const statements = [
      `ATTACH ${sqlString(this.path)} AS ${DB}`,
      metricsDdl(`${DB}.metrics`),
      'BEGIN',
      ...inserts,
      'COMMIT',
      `CHECKPOINT ${DB}`,
      `DETACH ${DB}`,
    ];
    try {
      await this.conn.run(statements.join(';\n'));
    } catch (err) {
      // A failure after the attach leaves the file attached (and locked): undo what is left. A lock error comes
      // from the attach itself, with nothing to undo.
      await this.conn.run('ROLLBACK').catch(() => {});
      await this.conn.run(`DETACH DATABASE IF EXISTS ${DB}`).catch(() => {});
      throw err;
    }
  }

  #lockedError(err: unknown): UserError {
    const steps = this.#rows.map((r) => r[1]);
    return new UserError(
      `the metrics of steps ${Math.min(...steps)}..${Math.max(...steps)} were not written: ${this.path} stayed locked by ` +
        `${lockHolder(err)} for ${this.closeTimeoutMs / 1000} s. Fix: close that program's handle on the file (a DuckDB ` +
        'shell or notebook holds it until it detaches; `nmoe viz` holds it only while answering a request).',
    );
  }

  /** Writes every buffered row, waits for it and releases DuckDB; throws the write error, if any. */
  async close(): Promise<void> {
    this.#closeDeadline = Date.now() + this.closeTimeoutMs;
    await this.flush();
    this.conn.closeSync();
    this.instance.closeSync();
    if (this.#error) throw this.#error;
  }
}
