/**
 * Writes one rank's part of a checkpoint step, start to finish, synchronously: it runs on the checkpoint thread
 * (checkpointer.ts), so none of its file operations waits for the training loop to yield. (When each one was an
 * awaited promise on the main thread, every await waited for the loop's once-a-step yield, and the first saves
 * of the tiny model on the CPU took 2-5 s instead of tens of milliseconds.)
 *
 * Order for a step: this rank's file (rank r > 0 then leaves its SHA-256 beside it and is done); on rank 0 the
 * dense file and train_state.json, then, once every rank's file and checksum are in, manifest.json (sizes and
 * SHA-256 of every file), then latest_checkpointed_iteration.txt, then retention removes all but the newest
 * `keepLast` complete steps. Every file is written atomically (atomic.ts).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { makeDirs } from '../util/dirs.ts';
import { NMOE_VERSION } from '../util/version.ts';
import { writeFileAtomic } from './atomic.ts';
import {
  DENSE_FILE,
  MANIFEST,
  type Manifest,
  STATE_FILE,
  TRACKER,
  checksumFile,
  expectedFiles,
  isForeignStep,
  iterName,
  listSteps,
  rankFile,
} from './layout.ts';
import { type TensorToWrite, writeSafetensors } from './safetensors.ts';

export interface StepJob {
  base: string;
  step: number;
  rank: number;
  world: number;
  keepLast: number;
  rankTensors: TensorToWrite[];
  /** Rank 0 only. */
  dense: TensorToWrite[] | null;
  /** train_state.json's text; rank 0 only. */
  state: string | null;
  gitSha: string | null;
}

/** Bytes of the whole step (rank 0; 0 on the other ranks). */
export function writeStep(job: StepJob): number {
  const dir = join(job.base, iterName(job.step));
  if (isForeignStep(dir))
    throw new Error(
      `${dir} holds a step nmoe did not write; nmoe never writes into one. Move it out of checkpoint_dir`,
    );
  makeDirs(dir);
  const meta = { format: 'nmoe-checkpoint', step: String(job.step) };
  const sums: Record<string, string> = {
    [rankFile(job.rank)]: writeSafetensors(join(dir, rankFile(job.rank)), job.rankTensors, meta),
  };
  if (job.rank !== 0) {
    writeFileAtomic(join(dir, checksumFile(job.rank)), `${sums[rankFile(job.rank)]}\n`);
    return 0;
  }
  sums[DENSE_FILE] = writeSafetensors(join(dir, DENSE_FILE), job.dense!, meta);
  writeFileAtomic(join(dir, STATE_FILE), job.state!);
  sums[STATE_FILE] = createHash('sha256').update(job.state!).digest('hex');
  const others = Array.from({ length: job.world - 1 }, (_, i) => checksumFile(i + 1));
  waitForFiles(dir, others); // each rank writes its checksum after its file is in place
  for (let r = 1; r < job.world; r++) sums[rankFile(r)] = readFileSync(join(dir, checksumFile(r)), 'utf8').trim();
  const files = expectedFiles(job.world);
  const bytes = Object.fromEntries(files.map((f) => [f, statSync(join(dir, f)).size]));
  const total = Object.values(bytes).reduce((a, b) => a + b, 0);
  const manifest: Manifest = {
    step: job.step,
    world: job.world,
    dp_count: job.world,
    bytes_total: total,
    git_sha: job.gitSha,
    nmoe_version: NMOE_VERSION,
    files,
    bytes,
    sha256: Object.fromEntries(files.map((f) => [f, sums[f]!])),
  };
  writeFileAtomic(join(dir, MANIFEST), `${JSON.stringify(manifest, null, 1)}\n`);
  for (const f of others) rmSync(join(dir, f), { force: true });
  writeFileAtomic(join(job.base, TRACKER), `${job.step}\n`);
  retain(job.base, job.step, job.keepLast);
  return total;
}

/**
 * Keeps the newest `keepLast` complete steps (never the one just written) and removes nmoe's older step dirs,
 * complete or not. A foreign step is never removed: it is not nmoe's to delete.
 */
function retain(base: string, latest: number, keepLast: number): void {
  const steps = listSteps(base);
  const kept = steps.filter((s) => s.complete).slice(0, Math.max(1, keepLast));
  const oldestKept = Math.min(latest, ...kept.map((s) => s.step));
  for (const s of steps) if (s.step < oldestKept && !s.foreign) rmSync(s.dir, { recursive: true, force: true });
}

/** Other ranks write their files on their own; rank 0 waits (up to 10 minutes) for all of them. */
function waitForFiles(dir: string, files: string[]): void {
  const deadline = Date.now() + 600_000;
  const nap = new Int32Array(new SharedArrayBuffer(4));
  while (!files.every((f) => existsSync(join(dir, f)))) {
    if (Date.now() > deadline)
      throw new Error(
        `${dir}: ranks' files did not all arrive: ${files.filter((f) => !existsSync(join(dir, f))).join(', ')}`,
      );
    Atomics.wait(nap, 0, 0, 100); // this thread has nothing else to do meanwhile
  }
}
