/**
 * Asynchronous checkpoint saving, as the reference's: the writer thread never touches live device tensors. `save` takes
 * a snapshot already copied off the device and queues it; the checkpoint thread writes the whole step (step-writer.ts)
 * while training goes on: encoding gigabytes of fp32 as bf16 and hashing them is seconds of CPU for a large rank file,
 * and each file operation on the main thread would wait for the training loop to yield. The tensors move to the thread
 * (their buffers are transferred, not copied, where the snapshot owns them). The thread starts with the Checkpointer,
 * so its start-up (tsx registering and compiling the writer's modules: 0.3 s on an idle 2-core machine, seconds on a
 * busy one) is over before the first save.
 *
 * The queue is bounded: when `maxQueue` saves are pending, `save` waits for the oldest instead of dropping one. The
 * folder is created and test-written at construction, so a bad `checkpoint_dir` stops the run before its first
 * step; a later write error (a full disk) is kept and thrown by the next `save` or by `close`.
 */
import type { Worker } from 'node:worker_threads';
import { ensureWritableDir } from '../util/dirs.ts';
import { UserError } from '../util/errors.ts';
import { startTsWorker } from '../util/ts-worker.ts';
import type { Snapshot } from './state.ts';
import type { StepJob } from './step-writer.ts';

export interface CheckpointerOptions {
  base: string;
  rank: number;
  world: number;
  keepLast: number;
  maxQueue?: number;
  /** Called after a step is complete (manifest and tracker written), with its size and the ms from queued to complete. */
  onSaved?: (step: number, bytes: number, ms: number) => void;
}

export interface WriteReply {
  id: number;
  bytes: number;
  /** Date.now() when the step was complete on disk. */
  finishedAt: number;
  /** Why the write failed; null when the step is in place. */
  error: string | null;
}

export class Checkpointer {
  readonly #pending: Promise<void>[] = [];
  readonly #waiting = new Map<number, { step: number; queuedAt: number; done: () => void }>();
  #next = 0;
  #error: unknown;
  #worker: Worker | null = null;

  constructor(readonly o: CheckpointerOptions) {
    ensureWritableDir(o.base, 'checkpoint_dir');
    this.#start();
  }

  /** Queues `snap` for writing; resolves once it is queued (not written). */
  async save(snap: Snapshot): Promise<void> {
    this.#throwIfFailed();
    while (this.#pending.length >= (this.o.maxQueue ?? 2)) await this.#pending[0];
    this.#throwIfFailed();
    const worker = this.#start();
    const id = this.#next++;
    const job = new Promise<void>((done) => this.#waiting.set(id, { step: snap.step, queuedAt: Date.now(), done }));
    this.#pending.push(job);
    void job.then(() => this.#pending.splice(this.#pending.indexOf(job), 1));
    const rank0 = this.o.rank === 0;
    const message: StepJob = {
      base: this.o.base,
      step: snap.step,
      rank: this.o.rank,
      world: this.o.world,
      keepLast: this.o.keepLast,
      rankTensors: snap.rank,
      dense: rank0 ? snap.dense : null,
      state: rank0 ? `${JSON.stringify(snap.state, null, 1)}\n` : null,
      gitSha: snap.state.git_sha,
    };
    // A buffer the typed array spans whole is the snapshot's own copy: hand it over instead of cloning it.
    const transfer = [...snap.rank, ...(rank0 ? snap.dense : [])]
      .map((t) => t.data)
      .filter((d) => d.byteOffset === 0 && d.byteLength === d.buffer.byteLength)
      .map((d) => d.buffer as ArrayBuffer);
    worker.ref(); // a pending save keeps the process alive
    worker.postMessage({ id, job: message }, [...new Set(transfer)]);
  }

  /** Waits for every queued save; throws the first write error. */
  async close(): Promise<void> {
    await Promise.all(this.#pending);
    const worker = this.#worker;
    this.#worker = null; // first: its exit is expected now
    await worker?.terminate();
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

  #start(): Worker {
    if (this.#worker) return this.#worker;
    const worker = startTsWorker(new URL('./writer-worker.ts', import.meta.url));
    worker.unref(); // idle until the first save
    worker.on('message', (m: WriteReply) => {
      const waiter = this.#waiting.get(m.id)!;
      this.#waiting.delete(m.id);
      if (this.#waiting.size === 0) worker.unref();
      if (m.error !== null) this.#error ??= new Error(m.error);
      else if (this.o.rank === 0) this.o.onSaved?.(waiter.step, m.bytes, m.finishedAt - waiter.queuedAt); // rank 0 speaks for the step
      waiter.done();
    });
    // A thread that dies fails the saves it held; the next save starts a new one.
    const fail = (err: Error) => {
      if (this.#worker === worker) this.#worker = null;
      this.#error ??= err;
      for (const w of this.#waiting.values()) w.done();
      this.#waiting.clear();
    };
    worker.on('error', fail);
    worker.on(
      'exit',
      (code) => this.#worker === worker && fail(new Error(`the checkpoint thread exited (code ${code})`)),
    );
    this.#worker = worker;
    return worker;
  }
}
