/**
 * The step watchdog of a multi-rank run: the last defence against a collective that never completes. The CPU
 * mesh and RDEP's barriers time out on their own, but NCCL waits forever for a peer that is alive and stuck (a
 * hung GPU, a rank blocked elsewhere), and the host then sits inside a stream synchronisation where no JavaScript
 * runs. So the check lives on a thread of its own: when a step has not finished `NMOE_STEP_TIMEOUT_S` seconds
 * after it began, that thread writes why to stderr and SIGKILLs its own process. The launcher (or the job system)
 * then sees a dead rank and tears the run down, and the run resumes from its newest complete checkpoint.
 */
import type { Worker } from 'node:worker_threads';
import { positiveEnv } from '../util/errors.ts';
import { startTsWorker } from '../util/ts-worker.ts';

export interface WatchdogData {
  rank: number;
  timeoutS: number;
  /** BigInt64 [2]: when the running step began (ms since the epoch, 0 between steps), and that step's number. */
  state: SharedArrayBuffer;
}

/** Seconds a step may take before the watchdog stops the rank; ten minutes, as PyTorch's NCCL watchdog. */
export const stepTimeoutS = (env: Record<string, string | undefined> = process.env) =>
  positiveEnv('NMOE_STEP_TIMEOUT_S', 600, 'seconds', env);

export class StepWatchdog {
  readonly #state: BigInt64Array;

  private constructor(
    private readonly worker: Worker,
    state: SharedArrayBuffer,
  ) {
    this.#state = new BigInt64Array(state);
  }

  static start(rank: number, timeoutS: number): StepWatchdog {
    const state = new SharedArrayBuffer(16);
    const workerData: WatchdogData = { rank, timeoutS, state };
    const worker = startTsWorker(new URL('./step-watchdog-worker.ts', import.meta.url), { workerData });
    worker.unref();
    return new StepWatchdog(worker, state);
  }

  /** Step `step` (counted from 1, as the trainer prints it) begins now. */
  arm(step: number): void {
    Atomics.store(this.#state, 1, BigInt(step));
    Atomics.store(this.#state, 0, BigInt(Date.now()));
  }

  /** Between steps (a checkpoint save may wait on the disk as long as it needs). */
  disarm(): void {
    Atomics.store(this.#state, 0, 0n);
  }

  async close(): Promise<void> {
    this.disarm();
    await this.worker.terminate();
  }
}
