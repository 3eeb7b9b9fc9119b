/**
 * A full mesh of TCP connections between the ranks of a CPU run, with a SYNCHRONOUS exchange: the model code that
 * calls collectives is synchronous (on the GPU they only enqueue work), so here the main thread posts its payloads
 * to a network thread (mesh-worker.ts) and blocks in Atomics.wait until every rank's payload has arrived — the way
 * NCCL's proxy thread moves bytes while the caller's stream waits. The CPU backend is the test oracle for
 * multi-rank training, so this favours simple and exact over fast.
 */
import { MessageChannel, type MessagePort, type Worker, receiveMessageOnPort } from 'node:worker_threads';
import { UserError } from '../../util/errors.ts';
import { startTsWorker } from '../../util/ts-worker.ts';
import type { StoreClient } from '../store.ts';
import type { MeshReply, MeshRequest, MeshWorkerData } from './mesh-worker.ts';

export interface MeshOptions {
  /** Address the other ranks reach this one at (the node's address; 127.0.0.1 on one machine). */
  host: string;
  /** How long one exchange may wait for the slowest rank. */
  timeoutMs: number;
}

export class CpuMesh {
  #seq = 0;
  #closed = false;

  private constructor(
    readonly rank: number,
    readonly world: number,
    private readonly worker: Worker,
    private readonly sync: MessagePort,
    private readonly signal: Int32Array,
    private readonly timeoutMs: number,
  ) {}

  /** Starts the network thread, publishes its address in the store and connects to every other rank. */
  static async connect(rank: number, world: number, store: StoreClient, opts: MeshOptions): Promise<CpuMesh> {
    const { port1, port2 } = new MessageChannel();
    const signal = new SharedArrayBuffer(8);
    const workerData: MeshWorkerData = { rank, world, host: opts.host, timeoutMs: opts.timeoutMs, signal, sync: port2 };
    const worker = startTsWorker(new URL('./mesh-worker.ts', import.meta.url), { workerData, transferList: [port2] });
    const next = (kind: MeshReply['kind']) =>
      new Promise<MeshReply>((resolve, reject) => {
        const onMessage = (m: MeshReply) => {
          if (m.kind !== kind && m.kind !== 'error') return;
          worker.off('message', onMessage);
          if (m.kind === 'error') reject(new UserError(m.message));
          else resolve(m);
        };
        worker.on('message', onMessage);
        worker.once('error', reject);
      });
    const listening = (await next('listening')) as Extract<MeshReply, { kind: 'listening' }>;
    await store.set(`mesh/${rank}`, `${opts.host}:${listening.port}`);
    const addrs: string[] = [];
    for (let j = 0; j < world; j++) addrs.push(Buffer.from(await store.get(`mesh/${j}`, opts.timeoutMs)).toString());
    const ready = next('ready');
    worker.postMessage({ kind: 'peers', addrs } satisfies MeshRequest);
    await ready;
    worker.unref();
    return new CpuMesh(rank, world, worker, port1, new Int32Array(signal), opts.timeoutMs);
  }

  /**
   * Sends `sends[j]` to rank j (its own entry included) and returns what every rank sent to this one, indexed by
   * sender. Every rank must call it the same number of times, in the same order.
   */
  exchange(sends: readonly Uint8Array[]): Uint8Array[] {
    if (this.#closed) throw new Error('exchange on a closed mesh');
    if (sends.length !== this.world) throw new Error(`exchange: ${sends.length} payloads for a world of ${this.world}`);
    const seq = ++this.#seq;
    this.sync.postMessage({ kind: 'exchange', seq, sends: sends as Uint8Array[] } satisfies MeshRequest);
    // The worker has its own timeout and posts the failure; this one only guards against a dead worker thread.
    while (Atomics.load(this.signal, 0) !== seq && Atomics.load(this.signal, 1) === 0) {
      if (Atomics.wait(this.signal, 0, seq - 1, this.timeoutMs + 10_000) === 'timed-out') {
        throw new UserError(`rank ${this.rank}: the CPU mesh's network thread stopped answering (exchange ${seq})`);
      }
    }
    const msg = receiveMessageOnPort(this.sync)?.message as MeshReply | undefined;
    if (!msg || msg.kind === 'error') throw new UserError(msg?.message ?? `rank ${this.rank}: exchange ${seq} failed`);
    if (msg.kind !== 'done' || msg.seq !== seq)
      throw new Error(`rank ${this.rank}: exchange ${seq} got a reply out of order`);
    return msg.recvs;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.worker.postMessage({ kind: 'close' } satisfies MeshRequest);
    await this.worker.terminate();
  }
}
