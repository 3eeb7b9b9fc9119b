/**
 * One run's metrics as a database: an in-memory DuckDB that attaches every rank file of the run READ_ONLY, as the
 * reference's NVIZ does, and a view `m` over all of them (UNION ALL of their `metrics` tables). It never opens a file
 * for writing. An attach that meets the trainer's write (see metrics/duckdb-writer.ts) is retried for up to a second: a
 * write takes tens of milliseconds, or hundreds on a loaded machine.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { DuckDBConnection, DuckDBInstance, DuckDBValue } from '@duckdb/node-api';
import { isLockError, sqlString } from '../../metrics/duckdb-writer.ts';
import { HttpError } from './errors.ts';

export interface MetricsDb {
  /** The rows of `sql` as plain objects, `?` bound from `params`. */
  all<R>(sql: string, params?: DuckDBValue[]): Promise<R[]>;
}

const ATTACH_RETRY_MS = 1000;
/** The view over a run with no rank file yet (or only files that have no table yet): the schema, no rows. */
const NO_ROWS =
  'SELECT NULL::TEXT AS run, NULL::TEXT AS tag, NULL::INTEGER AS step, NULL::BIGINT AS ts_ms, NULL::DOUBLE AS value WHERE false';

let duckdb: Promise<typeof import('@duckdb/node-api')> | null = null;

/** Opens the run's files; a lock that outlasts the retries is thrown as DuckDB's lock error. */
export async function openRunDb(files: readonly string[]): Promise<DuckDBInstance> {
  // Loaded on first use, so `nmoe viz` starts without loading DuckDB's native library.
  duckdb ??= import('@duckdb/node-api');
  const instance = await (await duckdb).DuckDBInstance.create(':memory:');
  try {
    const conn = await instance.connect();
    try {
      for (const [i, file] of files.entries()) await attach(conn, file, `r${i}`);
      const withTable = (
        await conn.runAndReadAll(
          `SELECT database_name FROM duckdb_tables() WHERE table_name = 'metrics' AND schema_name = 'main'`,
        )
      )
        .getRowObjectsJS()
        .map((r) => r.database_name as string)
        .sort();
      await conn.run(
        `CREATE VIEW m AS ${withTable.map((db) => `SELECT run, tag, step, ts_ms, value FROM ${db}.metrics`).join(' UNION ALL ') || NO_ROWS}`,
      );
    } finally {
      conn.closeSync();
    }
    return instance;
  } catch (err) {
    instance.closeSync();
    throw err;
  }
}

/** Runs `query` on a connection of its own, so that queries on one database may run side by side. */
export async function queryRunDb<T>(instance: DuckDBInstance, query: (db: MetricsDb) => Promise<T>): Promise<T> {
  const conn = await instance.connect();
  try {
    return await query({
      all: async <R>(sql: string, params?: DuckDBValue[]) =>
        (await conn.runAndReadAll(sql, params)).getRowObjectsJS() as R[],
    });
  } finally {
    conn.closeSync();
  }
}

async function attach(conn: DuckDBConnection, file: string, alias: string): Promise<void> {
  for (const t0 = Date.now(); ;) {
    try {
      await conn.run(`ATTACH ${sqlString(file)} AS ${alias} (READ_ONLY)`);
      return;
    } catch (err) {
      if (!isLockError(err))
        throw new HttpError(422, `cannot read the metrics file ${file}: ${(err as Error).message.split('\n')[0]}`);
      if (Date.now() - t0 > ATTACH_RETRY_MS) throw err;
      await sleep(10);
    }
  }
}
