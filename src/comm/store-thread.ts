/**
 * Hosts the store on a thread of its own. The process that hosts it may be rank 0 itself, whose main thread
 * blocks inside CPU collectives (cpu/mesh.ts); a store served from that thread would stop answering the other
 * ranks exactly when they need it (rank 1 asking for a key while rank 0 waits for rank 1 in an all-reduce).
 */
import { startTsWorker } from '../util/ts-worker.ts';

export interface HostedStore {
  port: number;
  close(): Promise<void>;
}

export async function hostStoreThread(bind: string, port: number): Promise<HostedStore> {
  const worker = startTsWorker(new URL('./store-thread-worker.ts', import.meta.url), { workerData: { bind, port } });
  const reply = await new Promise<{ port?: number; error?: { message: string; code?: string } }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  if (reply.error) {
    await worker.terminate();
    throw Object.assign(new Error(reply.error.message), { code: reply.error.code });
  }
  let closed: Promise<void> | undefined;
  return {
    port: reply.port!,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        worker.once('exit', () => resolve());
        worker.postMessage('close');
      })),
  };
}
