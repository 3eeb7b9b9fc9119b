/**
 * Reads runs' metrics (run-db.ts opens them) with a cache: an answer is kept per run and request until one of the
 * run's files changes (size or mtime), so repeated charts cost nothing and a reader never keeps the writer waiting
 * for answers it already has. When a live run's file stays locked past the attach's retries, the request gets the
 * last answer computed for it rather than an error (503 only when there is none yet).
 *
 * One attachment per run at a time, shared by every request that reads the run meanwhile. Besides saving work, this
 * keeps the locks right: DuckDB's file locks are POSIX record locks, which a process loses on a file as soon as it
 * closes any handle to it, so a second attachment of the same file closing under a running query would let the
 * writer in under that query. A newer attachment opens only once the older one has closed.
 *
 * How long a run stays attached: a run that may be training only while requests are reading it, so its writer is
 * never kept out longer than the queries in flight. A run the registry marks finished (completed, killed or failed)
 * stays attached until WARM_IDLE_MS pass without a request: DuckDB keeps its blocks in memory, which makes a series
 * over a 20M-row run about 0.6x as long as on a fresh attach (that must load and verify every block it scans). A
 * finished run that is resumed marks itself running before it writes; the next request then detaches it, and with
 * no request its writer waits at most WARM_IDLE_MS, buffering, losing nothing.
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

interface Attachment {
  signature: string;
  db: Promise<DuckDBInstance>;
  users: number;
  /** Stay attached after the last user (a finished run). */
  linger: boolean;
  /** No new users: it closes when the last one leaves. */
  retired: boolean;
  idle?: NodeJS.Timeout;
  /** Resolves once closed and removed. */
  closed: Promise<void>;
  close(): void;
}

export class MetricsStore {
  readonly #cache = new Map<string, { signature: string; value: unknown }>();
  readonly #attached = new Map<string, Attachment>();

  /** `finished(run)`: whether the run is known to write no more (the registry says so). */
  constructor(
    readonly dir: string,
    private readonly finished: (run: string) => boolean,
  ) {}

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
    const attached = this.#attached.get(run);
    if (attached?.linger && !finished) this.#retire(attached); // resumed: its writer must get in
    const cacheKey = `${run}\n${key}`;
    const cached = this.#cache.get(cacheKey);
    if (cached?.signature === signature) return this.#remember(cacheKey, cached) as T;
    let value: T;
    try {
      value = await this.#query(run, files, signature, finished, query);
    } catch (err) {
      if (!isLockError(err)) throw err;
      if (cached) return cached.value as T;
      throw new HttpError(
        503,
        `run ${run} is being written right now (its file is locked by ${lockHolder(err)}); try again in a moment`,
      );
    }
    this.#remember(cacheKey, { signature, value });
    return value;
  }

  /** Detaches every run. */
  close(): void {
    for (const a of this.#attached.values()) this.#retire(a);
  }

  #rankFiles(run: string): { files: string[]; signature: string } {
    const dir = confine(this.dir, checkRunName(run), 'run');
    const files = readdirSync(dir)
      .filter((f) => RANK_FILE.test(f))
      .sort((a, b) => Number(RANK_FILE.exec(a)![1]) - Number(RANK_FILE.exec(b)![1]))
      .map((f) => join(dir, f));
    const signature = files
      .map((f) => {
        const st = statSync(f);
        return `${f}:${st.size}:${st.mtimeMs}`;
      })
      .join('|');
    return { files, signature };
  }

  /** Keeps the newest CACHE_ENTRIES answers: a Map iterates in insertion order, so re-inserting marks as recent. */
  #remember(key: string, entry: { signature: string; value: unknown }): unknown {
    this.#cache.delete(key);
    this.#cache.set(key, entry);
    if (this.#cache.size > CACHE_ENTRIES) this.#cache.delete(this.#cache.keys().next().value!);
    return entry.value;
  }

  async #query<T>(
    run: string,
    files: string[],
    signature: string,
    linger: boolean,
    query: (db: MetricsDb) => Promise<T>,
  ): Promise<T> {
    let a = this.#attached.get(run);
    while (a && (a.retired || a.signature !== signature)) {
      this.#retire(a);
      await a.closed;
      a = this.#attached.get(run); // another request may have attached it meanwhile
    }
    a ??= this.#attach(run, files, signature);
    a.users++;
    a.linger = linger;
    clearTimeout(a.idle);
    try {
      return await queryRunDb(await a.db, query);
    } catch (err) {
      this.#retire(a); // a failed attach, or a database in a bad state: the next request starts afresh
      throw err;
    } finally {
      if (--a.users === 0) {
        if (a.linger && !a.retired) a.idle = setTimeout(() => this.#retire(a), WARM_IDLE_MS).unref();
        else this.#retire(a);
      }
    }
  }

  #attach(run: string, files: string[], signature: string): Attachment {
    let done!: () => void;
    let closing = false;
    const a: Attachment = {
      signature,
      db: openRunDb(files),
      users: 0,
      linger: false,
      retired: false,
      closed: new Promise((resolve) => (done = resolve)),
      close: () => {
        if (closing) return;
        closing = true;
        void a.db
          .then((db) => db.closeSync())
          .catch(() => {})
          .finally(() => {
            if (this.#attached.get(run) === a) this.#attached.delete(run);
            done();
          });
      },
    };
    this.#attached.set(run, a);
    return a;
  }

  #retire(a: Attachment): void {
    a.retired = true;
    clearTimeout(a.idle);
    if (a.users === 0) a.close();
  }
}
