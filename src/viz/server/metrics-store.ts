/**
 * Reads runs' metrics (run-db.ts opens them) with a cache: an answer is kept per run and request until one of the
 * run's files changes (size or mtime), so repeated charts cost nothing and a reader never keeps the writer waiting
 * for answers it already has. When a live run's file stays locked past the attach's retries, the request gets the
 * last answer computed for it rather than an error (503 only when there is none yet).
 *
 * How long files stay attached: a run that may be training is attached for one request and detached at once, so
 * its writer is never kept out for longer than a query. A run the registry marks finished (completed, killed or
 * failed) stays attached between requests, until WARM_IDLE_MS pass without one: DuckDB keeps its blocks in memory,
 * which halves the time of a series over a 20M-row run (a fresh attach must load and verify every block of the
 * columns it scans). A finished run that is resumed marks itself running before it writes; the next request then
 * detaches it, and with no request its writer waits at most WARM_IDLE_MS, buffering, losing nothing.
 */
import { lstatSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { DuckDBInstance } from '@duckdb/node-api';
import { isLockError, lockHolder } from '../../metrics/duckdb-writer.ts';
import { HttpError } from './errors.ts';
import { checkRunName, isRunName } from './params.ts';
import { confine } from './paths.ts';
import { type MetricsDb, openRunDb, queryRunDb } from './run-db.ts';

const RANK_FILE = /^rank_(\d+)\.duckdb$/;
const CACHE_ENTRIES = 500;
const WARM_IDLE_MS = 10_000;

/** A finished run's files, attached for as long as requests keep coming. */
interface Warm {
  signature: string;
  db: Promise<DuckDBInstance>;
  users: number;
  retired: boolean;
  closed: boolean;
  idle?: NodeJS.Timeout;
}

export class MetricsStore {
  readonly #cache = new Map<string, { signature: string; value: unknown }>();
  readonly #warm = new Map<string, Warm>();

  /** `finished(run)`: whether the run is known to write no more (the registry says so). */
  constructor(readonly dir: string, private readonly finished: (run: string) => boolean) {}

  /** The run directories under the metrics dir (symlinks are not followed: paths.ts refuses those that leave it). */
  runs(): string[] {
    try {
      return readdirSync(this.dir, { withFileTypes: true })
        .filter((e) => e.isDirectory() && isRunName(e.name))
        .map((e) => e.name);
    } catch {
      return [];
    }
  }

  /** Whether `run` is a run directory under the metrics dir. */
  has(run: string): boolean {
    return isRunName(run) && lstatSync(join(this.dir, run), { throwIfNoEntry: false })?.isDirectory() === true;
  }

  /**
   * `query` over the run's metrics (the view `m`), or its cached answer for `key` while the run's files are
   * unchanged. 400 for a bad run name, 404 for an unknown run.
   */
  async read<T>(run: string, key: string, query: (db: MetricsDb) => Promise<T>): Promise<T> {
    const { files, signature } = this.#rankFiles(run);
    const finished = this.finished(run);
    const warm = this.#warm.get(run);
    if (warm && !finished) this.#retire(run, warm); // resumed: its writer must get in
    const cacheKey = `${run}\n${key}`;
    const cached = this.#cache.get(cacheKey);
    if (cached?.signature === signature) return this.#remember(cacheKey, cached) as T;
    let value: T;
    try {
      value = finished ? await this.#queryWarm(run, files, signature, query) : await this.#queryOnce(files, query);
    } catch (err) {
      if (!isLockError(err)) throw err;
      if (cached) return cached.value as T;
      throw new HttpError(503, `run ${run} is being written right now (its file is locked by ${lockHolder(err)}); try again in a moment`);
    }
    this.#remember(cacheKey, { signature, value });
    return value;
  }

  /** Detaches every run. */
  close(): void {
    for (const [run, w] of this.#warm) this.#retire(run, w);
  }

  #rankFiles(run: string): { files: string[]; signature: string } {
    const dir = confine(this.dir, checkRunName(run), 'run');
    const files = readdirSync(dir)
      .filter((f) => RANK_FILE.test(f))
      .sort((a, b) => Number(RANK_FILE.exec(a)![1]) - Number(RANK_FILE.exec(b)![1]))
      .map((f) => join(dir, f));
    const signature = files.map((f) => {
      const st = statSync(f);
      return `${f}:${st.size}:${st.mtimeMs}`;
    }).join('|');
    return { files, signature };
  }

  /** Keeps the newest CACHE_ENTRIES answers: a Map iterates in insertion order, so re-inserting marks as recent. */
  #remember(key: string, entry: { signature: string; value: unknown }): unknown {
    this.#cache.delete(key);
    this.#cache.set(key, entry);
    if (this.#cache.size > CACHE_ENTRIES) this.#cache.delete(this.#cache.keys().next().value!);
    return entry.value;
  }

  async #queryOnce<T>(files: string[], query: (db: MetricsDb) => Promise<T>): Promise<T> {
    const db = await openRunDb(files);
    try {
      return await queryRunDb(db, query);
    } finally {
      db.closeSync();
    }
  }

  async #queryWarm<T>(run: string, files: string[], signature: string, query: (db: MetricsDb) => Promise<T>): Promise<T> {
    let w = this.#warm.get(run);
    if (w && w.signature !== signature) this.#retire(run, w);
    if (!w || w.retired) {
      w = { signature, db: openRunDb(files), users: 0, retired: false, closed: false };
      this.#warm.set(run, w);
    }
    const warm = w;
    warm.users++;
    clearTimeout(warm.idle);
    try {
      return await queryRunDb(await warm.db, query);
    } catch (err) {
      this.#retire(run, warm); // an attach that failed, or a database in a bad state: the next request starts afresh
      throw err;
    } finally {
      warm.users--;
      if (warm.retired) this.#closeIfUnused(warm);
      else if (warm.users === 0) warm.idle = setTimeout(() => this.#retire(run, warm), WARM_IDLE_MS).unref();
    }
  }

  #retire(run: string, w: Warm): void {
    if (this.#warm.get(run) === w) this.#warm.delete(run);
    w.retired = true;
    clearTimeout(w.idle);
    this.#closeIfUnused(w);
  }

  #closeIfUnused(w: Warm): void {
    if (w.users > 0 || w.closed) return;
    w.closed = true;
    void w.db.then((db) => db.closeSync(), () => {});
  }
}
