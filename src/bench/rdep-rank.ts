/**
 * One rank of `nmoe bench rdep` (started by the launcher, like `nmoe train`): joins the run on its GPU, runs the
 * cases, and rank 0 writes the results (JSON) to the file the CLI named.
 */
import { writeFileSync } from 'node:fs';
import { readDistEnv } from '../comm/env.ts';
import { openSession } from '../comm/session.ts';
import type { CudaBackend } from '../tensor/cuda/backend.ts';
import { reportError } from '../util/errors.ts';
import { type RdepCase, benchRdepRank } from './rdep-bench.ts';

const [dim, experts, iters, casesJson, out] = process.argv.slice(2);

async function run(): Promise<void> {
  const cases = JSON.parse(casesJson!) as RdepCase[];
  const env = readDistEnv();
  const maxTokens = Math.max(...cases.map((c) => c.tokens)),
    maxK = Math.max(...cases.map((c) => c.topK));
  const { backend, dist } = await openSession({ device: 'cuda' }, env, {
    shape: { experts: Number(experts), dim: Number(dim), topK: maxK, tokens: maxTokens, exchanges: 1 },
  });
  if (!dist) throw new Error('nmoe bench rdep needs at least 2 ranks');
  const results = await benchRdepRank(backend as CudaBackend, dist, {
    dim: Number(dim),
    experts: Number(experts),
    cases,
    iters: Number(iters),
  });
  if (env.rank === 0) writeFileSync(out!, JSON.stringify({ device: backend.name, world: env.worldSize, results }));
  await dist.close();
}

// Errors read as the CLI's do: one line for the user's mistake (no GPU, too little memory), a stack for a bug.
await run().catch((err: unknown) => (process.exitCode = reportError(err)));
