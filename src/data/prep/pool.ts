/**
 * A pool of tokenizer worker threads. Each worker runs tokenize-worker.ts through tsx (registered inside the
 * worker, since module hooks do not cross threads) and loads the tokenizer once. `run` hands a batch to the least
 * busy worker; callers await results in submission order, which keeps prep's output independent of timing.
 */
import type { Worker } from 'node:worker_threads';
import { startTsWorker } from '../../util/ts-worker.ts';
import type { TokenizeSettings, TokenizedBatch } from './tokenize.ts';

interface Pending {
  resolve(r: TokenizedBatch): void;
  reject(e: Error): void;
}

interface Slot {
  worker: Worker;
  busy: number;
}

export class TokenizerPool {
  readonly #slots: Slot[] = [];
  readonly #pending = new Map<number, Pending>();
  #seq = 0;
  #failure: Error | null = null;
  #closed: Promise<void> | null = null;

  private constructor() {}

  /** Starts `workers` threads and waits until each has loaded the tokenizer. */
  static async start(workers: number, settings: TokenizeSettings & { tokenizer: string }): Promise<TokenizerPool> {
    const pool = new TokenizerPool();
    await Promise.all(
      Array.from(
        { length: workers },
        () =>
          new Promise<void>((resolve, reject) => {
            const slot: Slot = {
              worker: startTsWorker(new URL('./tokenize-worker.ts', import.meta.url), { workerData: settings }),
              busy: 0,
            };
            pool.#slots.push(slot);
            slot.worker.on(
              'message',
              (msg: { ready?: true; seq?: number; result?: TokenizedBatch; error?: string }) => {
                if (msg.ready) return resolve();
                const p = pool.#pending.get(msg.seq!);
                slot.busy--;
                if (!p) return; // dropped by close()
                pool.#pending.delete(msg.seq!);
                if (msg.error !== undefined) p.reject(new Error(`tokenizer worker failed: ${msg.error}`));
                else p.resolve(msg.result!);
              },
            );
            slot.worker.on('error', (err) => {
              pool.#fail(err);
              reject(err);
            });
            slot.worker.on('exit', (code) => {
              if (code !== 0 && pool.#closed === null)
                pool.#fail(new Error(`tokenizer worker exited with code ${code}`));
            });
          }),
      ),
    );
    return pool;
  }

  get size(): number {
    return this.#slots.length;
  }

  run(ids: string[], texts: string[]): Promise<TokenizedBatch> {
    if (this.#failure) return Promise.reject(this.#failure);
    const slot = this.#slots.reduce((a, b) => (b.busy < a.busy ? b : a));
    const seq = this.#seq++;
    slot.busy++;
    return new Promise((resolve, reject) => {
      this.#pending.set(seq, { resolve, reject });
      slot.worker.postMessage({ seq, ids, texts });
    });
  }

  /** Stops the threads; batches still in flight are dropped (their promises never settle). Every call waits for the same stop. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#pending.clear();
      await Promise.all(this.#slots.splice(0).map((s) => s.worker.terminate()));
    })();
    return this.#closed;
  }

  #fail(err: Error): void {
    this.#failure ??= err;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }
}
