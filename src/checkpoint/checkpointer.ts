/**
 * Asynchronous checkpoint saving (inventory §7.2). `save` takes a snapshot already copied off the device and
 * queues it; a background chain writes its files while training goes on (the safetensors files are encoded and
 * written on a worker thread, tensor-writer.ts). The queue is bounded: when
 * `maxQueue` saves are pending, `save` waits for the oldest instead of dropping one. The folder is created and
 * test-written at construction, so a bad `checkpoint_dir` stops the run before its first step; a later write
 * error (a full disk) is kept and thrown by the next `save` or by `close`.
 *
 * Order of writes for a step: its rank file(s), the dense file and train_state.json (rank 0), then, once every
 * rank's file is there, manifest.json, then latest_checkpointed_iteration.txt, then retention removes all but the
 * newest `keepLast` complete steps. Every file is written atomically (see atomic.ts).
 */
import { existsSync, statSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ensureWritableDir, makeDirs } from '../util/dirs.ts';
import { UserError } from '../util/errors.ts';
import { NMOE_VERSION } from '../util/version.ts';
import { writeFileAtomic } from './atomic.ts';
import { DENSE_FILE, MANIFEST, type Manifest, STATE_FILE, TRACKER, expectedFiles, iterName, listSteps, rankFile } from './layout.ts';
import type { Snapshot } from './state.ts';
import { TensorFileWriter } from './tensor-writer.ts';

export interface CheckpointerOptions {
  base: string;
  rank: number;
  world: number;
  keepLast: number;
  maxQueue?: number;
  /** Called after a step is complete (manifest and tracker written), with its size. */
  onSaved?: (step: number, bytes: number, ms: number) => void;
}

export class Checkpointer {
  readonly #pending: Promise<void>[] = [];
  #chain: Promise<void> = Promise.resolve();
  #error: unknown;
  readonly #files = new TensorFileWriter();

  constructor(readonly o: CheckpointerOptions) {
    ensureWritableDir(o.base, 'checkpoint_dir');
  }

  /** Queues `snap` for writing; resolves once it is queued (not written). */
  async save(snap: Snapshot): Promise<void> {
    this.#throwIfFailed();
    while (this.#pending.length >= (this.o.maxQueue ?? 2)) await this.#pending[0];
    this.#throwIfFailed();
    const job = this.#chain.then(() => this.#write(snap)).catch((err: unknown) => {
      this.#error ??= err;
    });
    this.#chain = job;
    this.#pending.push(job);
    void job.then(() => this.#pending.splice(this.#pending.indexOf(job), 1));
  }

  /** Waits for every queued save; throws the first write error. */
  async close(): Promise<void> {
    await this.#chain;
    await this.#files.close();
    this.#throwIfFailed();
  }

  #throwIfFailed(): void {
    if (this.#error === undefined) return;
    throw new UserError(
      `a checkpoint save into ${this.o.base} failed: ${(this.#error as Error)?.message ?? String(this.#error)}. ` +
        'Fix: free space on that disk or point checkpoint_dir elsewhere, then resume from the newest complete step.',
      { cause: this.#error },
    );
  }

  async #write(snap: Snapshot): Promise<void> {
    const t0 = performance.now();
    const dir = join(this.o.base, iterName(snap.step));
    makeDirs(dir);
    const meta = { format: 'nmoe-checkpoint', step: String(snap.step) };
    await this.#files.write(join(dir, rankFile(this.o.rank)), snap.rank, meta);
    if (this.o.rank !== 0) return;
    await this.#files.write(join(dir, DENSE_FILE), snap.dense, meta);
    await writeFileAtomic(join(dir, STATE_FILE), `${JSON.stringify(snap.state, null, 1)}\n`);
    const files = expectedFiles(this.o.world);
    await waitForFiles(dir, files);
    const bytes = Object.fromEntries(files.map((f) => [f, statSync(join(dir, f)).size]));
    const total = Object.values(bytes).reduce((a, b) => a + b, 0);
    const manifest: Manifest = {
      step: snap.step, world: this.o.world, dp_count: this.o.world, bytes_total: total, git_sha: snap.state.git_sha,
      nmoe_version: NMOE_VERSION, files, bytes,
    };
    await writeFileAtomic(join(dir, MANIFEST), `${JSON.stringify(manifest, null, 1)}\n`);
    await writeFileAtomic(join(this.o.base, TRACKER), `${snap.step}\n`);
    await this.#retain(snap.step);
    this.o.onSaved?.(snap.step, total, performance.now() - t0);
  }

  /** Keeps the newest `keepLast` complete steps (never the one just written) and removes older step dirs. */
  async #retain(latest: number): Promise<void> {
    const steps = listSteps(this.o.base);
    const kept = steps.filter((s) => s.complete).slice(0, Math.max(1, this.o.keepLast));
    const oldestKept = Math.min(latest, ...kept.map((s) => s.step));
    for (const s of steps) if (s.step < oldestKept) await rm(s.dir, { recursive: true, force: true });
  }
}

/** Other ranks write their files on their own; rank 0 waits (up to 10 minutes) for all of them. */
async function waitForFiles(dir: string, files: string[]): Promise<void> {
  const deadline = Date.now() + 600_000;
  while (!files.every((f) => existsSync(join(dir, f)))) {
    if (Date.now() > deadline) throw new Error(`${dir}: ranks' files did not all arrive: ${files.filter((f) => !existsSync(join(dir, f))).join(', ')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
