/**
 * The reference's metrics store (inventory §9.1): one DuckDB file per rank, `{metrics_dir}/{run}/rank_{r}.duckdb`,
 * one table `metrics(run, tag, step, ts_ms, value)` keyed by (run, tag, step), rows upserted with INSERT OR REPLACE
 * (so steps replayed after a resume overwrite, never duplicate).
 *
 * Off the critical path: `record` only appends to an in-memory batch; `flush` hands the batch to a background
 * promise chain and returns at once; `close` waits for the chain. DuckDB allows one writer process per file, and
 * this writer holds its file for the whole run, so a dashboard can never take the lock from it: a read-only open
 * while training fails at once on the reader's side and never blocks or corrupts the writer (read after the run,
 * or a copy of the file).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { DuckDBConnection, DuckDBInstance, DuckDBValue } from '@duckdb/node-api';

export const METRICS_DDL = `CREATE TABLE IF NOT EXISTS metrics (
  run TEXT NOT NULL, tag TEXT NOT NULL, step INTEGER NOT NULL,
  ts_ms BIGINT NOT NULL, value DOUBLE NOT NULL,
  PRIMARY KEY (run, tag, step))`;

/** Rows per INSERT statement. */
const CHUNK = 500;

export const metricsPath = (dir: string, run: string, rank: number): string => join(dir, run, `rank_${rank}.duckdb`);

export class MetricsWriter {
  #rows: DuckDBValue[][] = [];
  #chain: Promise<void> = Promise.resolve();
  #error: unknown;

  private constructor(readonly run: string, readonly path: string, private readonly instance: DuckDBInstance, private readonly conn: DuckDBConnection) {}

  static async open(dir: string, run: string, rank: number): Promise<MetricsWriter> {
    const path = metricsPath(dir, run, rank);
    mkdirSync(join(dir, run), { recursive: true });
    // Loaded on first use: commands that write no metrics never load DuckDB's native library.
    const { DuckDBInstance } = await import('@duckdb/node-api');
    const instance = await DuckDBInstance.create(path);
    const conn = await instance.connect();
    await conn.run(METRICS_DDL);
    return new MetricsWriter(run, path, instance, conn);
  }

  /** Buffers one value per tag for `step`; non-finite values are left out (the column is NOT NULL DOUBLE). */
  record(step: number, values: Record<string, number>, tsMs = Date.now()): void {
    for (const [tag, value] of Object.entries(values)) {
      if (Number.isFinite(value)) this.#rows.push([this.run, tag, step, BigInt(tsMs), value]);
    }
  }

  /** Writes the buffered rows in the background. */
  flush(): void {
    const rows = this.#rows;
    this.#rows = [];
    if (!rows.length) return;
    this.#chain = this.#chain.then(() => this.#insert(rows)).catch((err: unknown) => {
      this.#error ??= err;
    });
  }

  async #insert(rows: DuckDBValue[][]): Promise<void> {
    for (let i = 0; i < rows.length; i += CHUNK) {
      const chunk = rows.slice(i, i + CHUNK);
      const sql = `INSERT OR REPLACE INTO metrics (run, tag, step, ts_ms, value) VALUES ${chunk.map(() => '(?, ?, ?, ?, ?)').join(', ')}`;
      await this.conn.run(sql, chunk.flat());
    }
  }

  /** Flushes, waits for every write, closes the file; throws the first write error. */
  async close(): Promise<void> {
    this.flush();
    await this.#chain;
    this.conn.closeSync();
    this.instance.closeSync();
    if (this.#error !== undefined) throw new Error(`metrics write to ${this.path} failed: ${(this.#error as Error)?.message ?? String(this.#error)}`);
  }
}
