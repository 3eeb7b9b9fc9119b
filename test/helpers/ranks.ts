/**
 * Runs the multi-rank fixture (test/fixtures/comm/rank.ts) as real processes with the torchrun environment, and reads
 * a run's losses back from its metrics: shared by test/dist-cpu.test.ts (CPU) and tools/gpu-multi.ts (GPUs); the
 * clean environment and free ports serve test/launch.test.ts too.
 */
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DuckDBInstance } from '@duckdb/node-api';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const RANK_ENTRY = fileURLToPath(new URL('../fixtures/comm/rank.ts', import.meta.url));
// Variables of the distributed contract that must not leak from the test's own environment into its processes.
const CONTRACT =
  /^(RANK|WORLD_SIZE|LOCAL_RANK|LOCAL_WORLD_SIZE|MASTER_ADDR|MASTER_PORT|SLURM_.*|NMOE_LAUNCH_STORE|NMOE_RDZV_TIMEOUT_S)$/;
/** This process's environment without the torchrun contract (so a child never joins the wrong run), quiet. */
export const BASE_ENV: Record<string, string> = {
  ...(Object.fromEntries(
    Object.entries(process.env).filter(([k, v]) => !CONTRACT.test(k) && v !== undefined),
  ) as Record<string, string>),
  CI: '1',
  NO_COLOR: '1',
};

/** A port nothing listens on now (the OS picks it), for rank 0's store. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
      .listen(0, '127.0.0.1', () => {
        const { port } = server.address() as AddressInfo;
        server.close(() => resolve(port));
      })
      .on('error', reject);
  });
}

/** Starts `world` processes of the fixture in the repository root with the torchrun environment (rank 0 hosts the store). */
export async function runRanks(world: number, args: (rank: number) => string[], env: Record<string, string> = {}) {
  const port = String(await freePort());
  const runs = Array.from(
    { length: world },
    (_, rank) =>
      new Promise<{ code: number | null; out: string }>((resolve) => {
        const child = spawn(process.execPath, ['--import', 'tsx', RANK_ENTRY, ...args(rank)], {
          cwd: ROOT,
          env: {
            ...BASE_ENV,
            RANK: String(rank),
            WORLD_SIZE: String(world),
            LOCAL_RANK: String(rank),
            LOCAL_WORLD_SIZE: String(world),
            MASTER_ADDR: '127.0.0.1',
            MASTER_PORT: port,
            ...env,
          },
        });
        let out = '';
        child.stdout.on('data', (d) => (out += d));
        child.stderr.on('data', (d) => (out += d));
        child.on('close', (code) => resolve({ code, out }));
      }),
  );
  return Promise.all(runs);
}

/** train/loss per step from a run's rank-0 metrics. */
export async function trainLosses(metricsDir: string): Promise<number[]> {
  const run = readdirSync(metricsDir)[0]!;
  const db = await DuckDBInstance.create(join(metricsDir, run, 'rank_0.duckdb'), { access_mode: 'READ_ONLY' });
  const conn = await db.connect();
  const rows = (await conn.runAndReadAll(`SELECT value FROM metrics WHERE tag = 'train/loss' ORDER BY step`)).getRows();
  conn.closeSync();
  db.closeSync();
  return rows.map((r) => r[0] as number);
}
