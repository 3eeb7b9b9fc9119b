/**
 * Fixtures for the dashboard tests: the arguments of a short real `nmoe train` into a temp dir (CPU, tiny, every
 * step logged), a run's metrics read straight from its DuckDB file, and GET helpers for the server.
 */
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { join } from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';

export function trainArgs(dir: string, steps: number): string[] {
  return [
    'train',
    `--steps=${steps}`,
    '--seq_len=32',
    '--batch_size=2',
    '--warmup_steps=2',
    '--log_every=1',
    '--checkpoint_every=1000',
    `--metrics_dir=${join(dir, 'metrics')}`,
    `--experiments_db=${join(dir, 'experiments.db')}`,
    `--checkpoint_dir=${join(dir, 'ckpt')}`,
  ];
}

export interface Row {
  tag: string;
  step: number;
  ts_ms: number;
  value: number;
}

/** Every row of a rank file, ordered by tag and step (read-only; only while no writer holds it). */
export async function readRows(file: string): Promise<Row[]> {
  const db = await DuckDBInstance.create(file, { access_mode: 'READ_ONLY' });
  const conn = await db.connect();
  try {
    return (
      await conn.runAndReadAll('SELECT tag, step, ts_ms::DOUBLE AS ts_ms, value FROM metrics ORDER BY tag, step')
    ).getRowObjectsJS() as unknown as Row[];
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

export async function getJson<T = Record<string, unknown>>(
  base: string,
  path: string,
): Promise<{ status: number; body: T; type: string | null }> {
  const r = await fetch(new URL(path, base));
  return { status: r.status, body: (await r.json()) as T, type: r.headers.get('content-type') };
}

/** A raw request, for what fetch would normalise or refuse: `..` in the path, another Host header, odd methods. */
export function rawRequest(
  base: string,
  opts: { path: string; method?: string; headers?: Record<string, string> },
): Promise<{ status: number; body: string; headers: Record<string, unknown> }> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request(
      { host: url.hostname, port: url.port, path: opts.path, method: opts.method ?? 'GET', headers: opts.headers },
      (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** Opens `file` for writing in another process, as the trainer would, and closes it: 'opened' or DuckDB's error. */
export function openForWriteInChild(file: string): Promise<string> {
  const code = `import { DuckDBInstance } from '@duckdb/node-api';
    try { (await DuckDBInstance.create(${JSON.stringify(file)})).closeSync(); console.log('opened'); } catch (e) { console.log(e.message); }`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  return new Promise((resolve) => child.on('exit', () => resolve(out.trim())));
}
