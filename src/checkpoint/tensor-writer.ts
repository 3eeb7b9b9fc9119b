/**
 * Writes checkpoint safetensors files on a worker thread. Rounding gigabytes of fp32 to bf16 and laying them out
 * in a file is seconds of CPU for a large rank file (writeSafetensors took 0.81-0.87 s for 128 MB of bf16 on the
 * 2-core CI machine, the disk write included); on the main thread that time would stall training, which the
 * asynchronous save exists to avoid. The tensors move to the worker
 * (their buffers are transferred, not copied, where the snapshot owns them), which writes the file atomically with
 * writeSafetensors. The thread starts with the first write.
 */
import type { Worker } from 'node:worker_threads';
import { startTsWorker } from '../util/ts-worker.ts';
import type { TensorToWrite } from './safetensors.ts';

export interface WriteRequest {
  id: number;
  path: string;
  tensors: TensorToWrite[];
  metadata: Record<string, string>;
}

export interface WriteReply {
  id: number;
  /** Why the write failed; null when the file is in place. */
  error: string | null;
}

export class TensorFileWriter {
  #worker: Worker | null = null;
  #next = 0;
  readonly #waiting = new Map<number, { resolve: () => void; reject: (err: Error) => void }>();

  /** Writes `tensors` to `path` (temp file, fsync, rename, directory fsync); the snapshot gives up their buffers. */
  write(path: string, tensors: TensorToWrite[], metadata: Record<string, string>): Promise<void> {
    const worker = this.#start();
    const id = this.#next++;
    const done = new Promise<void>((resolve, reject) => this.#waiting.set(id, { resolve, reject }));
    // A buffer the typed array spans whole is the snapshot's own copy: hand it over instead of cloning it.
    const transfer = tensors.map((t) => t.data).filter((d) => d.byteOffset === 0 && d.byteLength === d.buffer.byteLength).map((d) => d.buffer as ArrayBuffer);
    worker.ref(); // a pending write keeps the process alive
    worker.postMessage({ id, path, tensors, metadata } satisfies WriteRequest, [...new Set(transfer)]);
    return done;
  }

  async close(): Promise<void> {
    await this.#worker?.terminate();
    this.#worker = null;
  }

  #start(): Worker {
    if (this.#worker) return this.#worker;
    const worker = startTsWorker(new URL('./tensor-writer-worker.ts', import.meta.url));
    worker.on('message', (m: WriteReply) => {
      const waiter = this.#waiting.get(m.id)!;
      this.#waiting.delete(m.id);
      if (this.#waiting.size === 0) worker.unref();
      if (m.error === null) waiter.resolve();
      else waiter.reject(new Error(m.error));
    });
    // A thread that dies fails the writes it held; the next write starts a new one.
    const fail = (err: Error) => {
      if (this.#worker === worker) this.#worker = null;
      for (const w of this.#waiting.values()) w.reject(err);
      this.#waiting.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the checkpoint writer thread exited (code ${code})`)));
    this.#worker = worker;
    return worker;
  }
}
